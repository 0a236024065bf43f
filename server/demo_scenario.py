"""The demo's scenario (``mission-control demo``, server/demo.py): its agents, the services
they call and the demo's own policies, the upstreams' script of faults, and how a run's logs
are read back into what the KPIs are computed from (server/kpis.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mission_control.client.config import policy_from_proto
from mission_control.resilience.v1 import policy_pb2

from . import kpis

AGENTS = ("research", "poc", "documentation")
UPSTREAM_OF = {"llm_provider": "llm-primary", "storage_backend": "storage", "agent_communication": "agents"}
POLICIES = [
    policy_pb2.ServicePolicy(
        service="llm_provider",
        timeout_secs=2,
        max_retries=1,
        failure_threshold=5,
        success_threshold=2,
        wait_duration_secs=2,
        # outages here last seconds: a probe every 8 s at most finds the recovery soon
        max_wait_duration_secs=8,
        rate_limit_requests=100000,
        fallbacks=["llm_backup"],
        backoff=policy_pb2.BackoffPolicy(initial_backoff_secs=0.02),
    ),
    policy_pb2.ServicePolicy(service="llm_backup", timeout_secs=5, rate_limit_requests=100000),
    policy_pb2.ServicePolicy(
        service="storage_backend",
        timeout_secs=0.3,
        max_retries=2,
        failure_threshold=8,
        success_threshold=2,
        wait_duration_secs=1.5,
        max_wait_duration_secs=6,
        rate_limit_requests=100000,
        backoff=policy_pb2.BackoffPolicy(initial_backoff_secs=0.01, jitter=0),
    ),
    policy_pb2.ServicePolicy(service="agent_communication", timeout_secs=1, rate_limit_requests=100000),
]
NEW_LLM_TIMEOUT = 1.5


def schedule(t0: float, duration: float, seed: int) -> list[kpis.Phase]:
    """The upstreams' faults in a run of ``duration`` s from ``t0``, moved a little by ``seed``."""
    rng = random.Random(seed)

    def at(share: float) -> float:
        return t0 + duration * (share + rng.uniform(-0.02, 0.02))

    return [
        kpis.Phase("llm-primary", at(0.20), at(0.45), "fail"),
        kpis.Phase("storage", at(0.48), at(0.60), "slow:0.6"),
        kpis.Phase("storage", at(0.62), at(0.75), "flap"),
    ]


def script(phases: list[kpis.Phase], upstream: str) -> str:
    """``upstream``'s part of the schedule, as its process reads it."""
    return json.dumps([[p.start, p.end, p.mode] for p in phases if p.upstream == upstream])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log written so far (a line cut short is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def collect(
    folder: Path, phases: list[kpis.Phase], transitions: list[tuple[float, str, str]], changes: list[float]
) -> kpis.Run:
    upstream_calls = {name: read_jsonl(folder / f"{name}.jsonl") for name in ("llm-primary", "storage")}
    agent_calls: list[dict[str, Any]] = []
    seen: dict[str, list[tuple[float, float]]] = {}
    for name in AGENTS:
        for row in read_jsonl(folder / f"{name}.jsonl"):
            if "policy_timeout" in row:
                seen.setdefault(name, []).append((row["t"], row["policy_timeout"]))
            else:
                agent_calls.append(row)
    made_writes = {c["id"] for c in upstream_calls["storage"] if c["ok"]}
    for row in agent_calls:
        if row.get("served_by") == "spool" and row["id"] not in made_writes:
            # spooled, and never made by the end of the run: the write failed
            row.update(ok=False, error="StorageFailure")
    config_changes = []
    for made in changes:
        enforced = {
            name: next(
                (t for t, value in seen.get(name, []) if value == NEW_LLM_TIMEOUT and t >= made - 0.5), None
            )
            for name in AGENTS
        }
        config_changes.append((made, enforced))
    policies = {p.service: policy_from_proto(p) for p in POLICIES if p.service in UPSTREAM_OF}
    return kpis.Run(
        phases=phases,
        upstream_calls=upstream_calls,
        agent_calls=[c for c in agent_calls if c["service"] != "agent_communication"],
        transitions=transitions,
        upstream_of={k: v for k, v in UPSTREAM_OF.items() if k != "agent_communication"},
        # each OPEN's wait, worked out from the transitions with the policy's open_wait
        wait_of={service: policy.wait_duration_secs for service, policy in policies.items()},
        open_wait={service: policy.open_wait for service, policy in policies.items()},
        config_changes=config_changes,
    )
