"""``mission-control demo``: the seed's KPIs, measured on a live fleet scenario.

Real processes: a control plane on etcd, three agents (research, proof-of-concept,
documentation) making LLM, storage and agent-to-agent calls, and upstream servers that
follow a script — healthy, a hard outage of the primary LLM (a backup LLM stays up), storage
answering too slowly, storage flapping, recovery — plus a policy change in the middle. The
terminal shows breakers, calls, rejections and fallbacks as it goes; the run ends with the
KPI table computed from the upstreams' call logs and the agents' results (server/kpis.py).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import grpc
from mission_control.client.config import policy_from_proto
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from . import kpis
from .demo_checks import checks_note, with_recovery_checks
from .etcd_process import EtcdProcess
from .proc import Child

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


def _phases(t0: float, duration: float, seed: int) -> list[kpis.Phase]:
    rng = random.Random(seed)

    def at(share: float) -> float:
        return t0 + duration * (share + rng.uniform(-0.02, 0.02))

    return [
        kpis.Phase("llm-primary", at(0.20), at(0.45), "fail"),
        kpis.Phase("storage", at(0.48), at(0.60), "slow:0.6"),
        kpis.Phase("storage", at(0.62), at(0.75), "flap"),
    ]


def _script(phases: list[kpis.Phase], upstream: str) -> str:
    return json.dumps([[p.start, p.end, p.mode] for p in phases if p.upstream == upstream])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


class _Watcher(threading.Thread):
    """Records every breaker transition (wall time, name, state) from WatchBreakers."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.transitions: list[tuple[float, str, str]] = []
        self.states: dict[str, str] = {}
        self._call: Any = None

    def run(self) -> None:
        stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(self.address))
        self._call = stub.WatchBreakers(pb.WatchBreakersRequest())
        try:
            for event in self._call:
                state = pb.BreakerState.Name(event.breaker.state).removeprefix("BREAKER_STATE_")
                if self.states.get(event.breaker.name) != state:
                    self.transitions.append((time.time(), event.breaker.name, state))
                self.states[event.breaker.name] = state
        except grpc.RpcError:
            pass

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()


def _phase_label(phases: list[kpis.Phase], now: float) -> str:
    active = [f"{p.upstream} {p.mode.split(':')[0]}" for p in phases if p.start <= now < p.end]
    return ", ".join(active) or "healthy"


def run_demo(
    duration: float = 60.0,
    seed: int = 1,
    *,
    etcd: str | None = None,
    live: bool = True,
    out: TextIO = sys.stdout,
    http: str = "127.0.0.1:0",
) -> dict[str, Any]:
    """Run the scenario; returns the KPIs (and prints the table)."""
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as tmp:
        folder = Path(tmp)
        children: list[Child] = []
        etcd_proc = None
        try:
            if etcd is None:
                etcd_proc = EtcdProcess(folder / "etcd", log_file=folder / "etcd.log").start()
                etcd = etcd_proc.endpoint
            plane = Child.python(
                "mission_control.server.cli",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                etcd,
                "--etcd-prefix",
                f"/demo-{seed}-{int(time.time())}",
                "--http",
                http,
                own_group=True,
            )
            children.append(plane)
            address = plane.wait_for("mission-control: serving on ").split()[3]
            dashboard = plane.wait_for("mission-control: dashboard at ").split()[-1]
            print(f"dashboard: {dashboard}  (open it to watch the fleet live)", file=out, flush=True)
            stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
            # phases relative to the start, which is set once every process is up (a busy
            # machine may take seconds to start them: no fixed lead)
            relative = _phases(0.0, duration, seed)
            peers = {}
            for name in ("llm-primary", "llm-backup", "storage"):
                child = Child.python(
                    "mission_control.server.demo_parts",
                    "upstream",
                    name,
                    _script(relative, name),
                    str(folder / f"{name}.jsonl"),
                    own_group=True,
                )
                children.append(child)
                peers[name] = f"127.0.0.1:{child.wait_for('PORT ').split()[1]}"
            policies = with_recovery_checks(POLICIES, peers)  # the checks ask the upstreams
            for policy in policies:
                stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
            agents = []
            for name in AGENTS:
                child = Child.python(
                    "mission_control.server.demo_parts",
                    "agent",
                    name,
                    address,
                    json.dumps(peers),
                    str(folder / f"{name}.jsonl"),
                    "0",
                    str(duration),
                    own_group=True,
                )
                children.append(child)
                agents.append((name, child, f"127.0.0.1:{child.wait_for('PORT ').split()[1]}"))
            for i, (_, child, _) in enumerate(agents):
                child.send(agents[(i + 1) % len(agents)][2])
            for _, child, _ in agents:
                child.wait_for("READY", timeout=60)
            t0 = time.time() + 1.0
            end = t0 + duration
            phases = [dataclasses.replace(p, start=t0 + p.start, end=t0 + p.end) for p in relative]
            for child in children[1:]:
                child.send(repr(t0))
            watcher = _Watcher(address)
            watcher.start()
            change_at = t0 + duration * 0.5
            changes: list[float] = []
            while time.time() < end + 1.0:
                now = time.time()
                if not changes and now >= change_at:
                    changed = policy_pb2.ServicePolicy()
                    changed.CopyFrom(policies[0])
                    changed.timeout_secs = NEW_LLM_TIMEOUT
                    changes.append(time.time())
                    stub.PutPolicy(pb.PutPolicyRequest(policy=changed), timeout=10)
                if live:
                    _show(out, now - t0, duration, phases, watcher, folder)
                time.sleep(1.0)
            for _, child, _ in agents:
                child.wait_for("DONE", timeout=30)
            watcher.stop()
            run = _collect(folder, phases, watcher.transitions, changes)
        finally:
            # the control plane first: it then logs nothing about the agents going away
            for child in children:
                child.kill()
            if etcd_proc is not None:
                etcd_proc.stop()
    results = kpis.compute(run, "llm_provider")
    _table(out, results, duration, seed)
    return results


def _collect(
    folder: Path, phases: list[kpis.Phase], transitions: list[tuple[float, str, str]], changes: list[float]
) -> kpis.Run:
    upstream_calls = {name: _read_jsonl(folder / f"{name}.jsonl") for name in ("llm-primary", "storage")}
    agent_calls: list[dict[str, Any]] = []
    seen: dict[str, list[tuple[float, float]]] = {}
    for name in AGENTS:
        for row in _read_jsonl(folder / f"{name}.jsonl"):
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


def _show(
    out: TextIO, elapsed: float, duration: float, phases: list[kpis.Phase], watcher: _Watcher, folder: Path
) -> None:
    calls = rejected = fallbacks = failed = 0
    for name in AGENTS:
        for row in _read_jsonl(folder / f"{name}.jsonl"):
            if "service" not in row:
                continue
            calls += 1
            rejected += row.get("error") in ("CircuitBreakerOpen", "ResourceExhausted")
            fallbacks += row.get("served_by") == "fallback"
            failed += not row.get("ok", True)
    states = " ".join(f"{n}={watcher.states.get(n, 'CLOSED')}" for n in ("llm_provider", "storage_backend"))
    label = _phase_label(phases, time.time()) if elapsed >= 0 else "starting"
    out.write(
        f"[{max(0.0, elapsed):5.1f}/{duration:.0f}s] {label:28} {states}  calls={calls} "
        f"failed={failed} rejected={rejected} fallbacks={fallbacks}\n"
    )
    out.flush()


def _policies_note() -> str:
    """The demo's own policies in a line: they are tuned to its scenario, not the defaults."""
    shown = []
    for proto in POLICIES:
        if proto.service in ("llm_provider", "storage_backend"):
            policy = policy_from_proto(proto)
            shown.append(
                f"{proto.service} breaker wait {policy.wait_duration_secs:g} s up to "
                f"{policy.longest_wait():g} s, timeout {policy.timeout_secs:g} s"
            )
    return (
        f"the demo's policies, tuned to its minute-long scenario: {'; '.join(shown)}; {checks_note()}; "
        "the defaults wait 60 s; amplification in a full outage with the default retry budget is bench case 5"
    )


def _table(out: TextIO, results: dict[str, Any], duration: float, seed: int) -> None:
    out.write(f"\nKPIs (duration {duration:g}s, seed {seed}, {results['calls']} calls)\n")
    rows = kpis.verdicts(results)
    width = max(len(r[0]) for r in rows)
    out.write(f"{'KPI'.ljust(width)}  {'value':>9}  {'seed target':>11}  met  {'goal':>8}  met\n")
    for name, value, target, met, goal, met_goal in rows:
        out.write(f"{name.ljust(width)}  {value:>9}  {target:>11}  {met:3}  {goal:>8}  {met_goal}\n")
    r = results
    lost = ", ".join(f"{k} {v}" for k, v in sorted(r["lost_by_error"].items())) or "none"
    by_service = ", ".join(f"{k} {v}" for k, v in r["false_positives_by_service"].items())
    notes = [
        "detection from the first failed call of the outage",
        f"{r['outage_calls_reached']} of {r['outage_calls']} outage calls reached the failing upstream, "
        f"which got {r['outage_attempts']} attempts in the outage "
        f"({r['outage_attempts'] / max(r['outage_calls'], 1):.2f} per call made)",
        f"{r['faulted_calls']} calls hit by a fault, lost: {lost}",
        f"{r['false_positives']} false positives over {r['healthy_calls']} calls to a healthy upstream "
        f"({by_service}; {r['false_opens']} OPENs on a healthy upstream; {r['false_positives_in_wait']} "
        f"calls stopped within the wait of an OPEN an outage caused, {r['kept_off_after_outage']} "
        "kept off the LLM after it recovered)",
        f"reload took {r['reload_seconds'] or 0:.3f}s",
    ]
    out.write(f"({'; '.join(notes)})\n")
    out.write(f"({_policies_note()})\n")
    out.flush()
