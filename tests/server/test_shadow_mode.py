"""Shadow mode end to end: a control plane process on a real etcd, agent processes calling
a real upstream, and the operator CLI publishing, promoting and clearing a candidate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.json_values import json_values

from tests.support.etcd import etcdctl
from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "llm_provider"
#: A window so long that no token comes back while a test runs: counts are exact.
WINDOW = 36000.0


def cli(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mission_control.server.cli", *args, "--server", server]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def poll(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def shadow_row(plane: str) -> dict[str, Any] | None:
    """The service's row of ``stats --json``, read over gRPC (polled: no process per look)."""
    with grpc.insecure_channel(plane) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=10).statistics
    rows = [json_values(r) for r in stats.shadow_services if r.service == SERVICE]
    return rows[0] if rows else None


@pytest.fixture
def fleet(etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]) -> tuple[str, str]:
    """A control plane and an upstream, each its own process; the enforced policy stored."""
    proc, plane = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    upstream_proc = python("tests.support.upstream", "llm")
    spawned.append(upstream_proc)
    enforced = policy_pb2.ServicePolicy(
        service=SERVICE,
        rate_limit_requests=100,
        rate_limit_window_secs=WINDOW,
        failure_threshold=50,
        max_retries=0,
    )
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(plane))
    stub.PutPolicy(pb.PutPolicyRequest(policy=enforced), timeout=10)
    return plane, f"127.0.0.1:{upstream_proc.port()}"


def test_rate_limit_in_shadow_counts_would_rejects_then_promote_enforces_it(
    fleet: tuple[str, str], spawned: list[Proc]
) -> None:
    plane, upstream = fleet
    a = agent("agent-a", plane, upstream, SERVICE)
    spawned.append(a)
    candidate = {"rate_limit_requests": 10, "rate_limit_window_secs": WINDOW, "failure_threshold": 50}
    published = cli("policies", "shadow", SERVICE, json.dumps(candidate), server=plane)
    assert published.returncode == 0, published.stderr
    poll(lambda: a.ask("shadow")["rate_limit_requests"] == 10)

    # every call succeeds: the candidate's limit of 10 is not enforced...
    assert a.ask("call 40")["outcomes"] == {"ok": 40}
    # ...and the 30 calls beyond it are what the candidate would have refused
    row = poll(lambda: (r := shadow_row(plane)) and r.get("calls") == 40 and r)
    assert row["shadow_rejected_by_reason"] == {"rate_limit": 30}
    assert row.get("rejected_by_reason", {}) == {}
    table = cli("stats", server=plane).stdout
    assert "rejected by rate_limit  0         30" in table, table
    assert json.loads(cli("stats", "--json", server=plane).stdout)["shadow_services"] == [row]

    # compare-and-swap: a promotion over a policy changed since the revision seen is refused
    stale = cli("policies", "promote", SERVICE, "--revision", "1", "--reason", "trial held", server=plane)
    assert stale.returncode == 6, stale.stderr
    assert a.ask("policy")["rate_limit_requests"] == 100 and shadow_row(plane) is not None
    promoted = cli("policies", "promote", SERVICE, "--reason", "trial held", server=plane)
    assert promoted.returncode == 0, promoted.stderr
    poll(lambda: a.ask("policy")["rate_limit_requests"] == 10)
    poll(lambda: a.ask("shadow")["rate_limit_requests"] is None)
    assert shadow_row(plane) is None
    # enforced now: the bucket keeps its share used (40 of 100, so 6 of 10 are left)
    assert a.ask("call 15")["outcomes"] == {"ok": 6, "ResourceExhausted": 9}


def test_shadow_breaker_would_open_while_the_real_one_stays_closed_and_clear_drops_it(
    fleet: tuple[str, str], spawned: list[Proc]
) -> None:
    plane, upstream = fleet
    a = agent("agent-a", plane, upstream, SERVICE)
    b = agent("agent-b", plane, upstream, SERVICE)
    spawned += [a, b]
    bad = cli("policies", "shadow", SERVICE, '{"failure_threshold": 0, "timeout_secs": "soon"}', server=plane)
    assert bad.returncode == 2
    assert "failure_threshold" in bad.stderr and "timeout_secs" in bad.stderr, bad.stderr
    assert cli("policies", "shadow", SERVICE, "--clear", server=plane).returncode == 4  # nothing stored

    candidate = {
        "failure_threshold": 3,
        "wait_duration_secs": 600,
        "max_retries": 2,
        "retryable_codes": ["UNAVAILABLE"],
        "rate_limit_requests": 100,
        "rate_limit_window_secs": WINDOW,
    }
    assert cli("policies", "shadow", SERVICE, json.dumps(candidate), server=plane).returncode == 0
    for proc in (a, b):
        poll(lambda proc=proc: proc.ask("shadow")["held"])
    set_mode(upstream, "fail", code="UNAVAILABLE")
    outcomes = a.ask("call 5")["outcomes"]
    assert sum(outcomes.values()) == 5 and "CircuitBreakerOpen" not in outcomes, outcomes

    row = poll(lambda: (r := shadow_row(plane)) and r.get("calls") == 5 and r)
    assert row["shadow_breaker_state"] == "BREAKER_STATE_OPEN"
    assert row["shadow_breaker_opens"] == 1
    assert row["breaker_state"] == "BREAKER_STATE_CLOSED"
    # the candidate retries UNAVAILABLE twice; the enforced policy never retries
    assert row["shadow_retries"] == 5 and row["retries"] == 0
    # with the shadow breaker open, every further call is one it would have stopped
    stopped = row["shadow_rejected_by_reason"].get("breaker", 0)
    outcomes = b.ask("call 4")["outcomes"]
    assert sum(outcomes.values()) == 4 and "CircuitBreakerOpen" not in outcomes, outcomes
    row = poll(lambda: (r := shadow_row(plane)) and r.get("calls") == 9 and r)
    assert row["shadow_rejected_by_reason"]["breaker"] == stopped + 4
    assert row["breaker_state"] == "BREAKER_STATE_CLOSED"

    cleared = cli("policies", "shadow", SERVICE, "--clear", server=plane)
    assert cleared.returncode == 0, cleared.stderr
    for proc in (a, b):
        poll(lambda proc=proc: not proc.ask("shadow")["held"])
    assert shadow_row(plane) is None


def test_promote_of_a_replaced_candidate_is_refused(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, plane = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)

    def publish(rate: int) -> int:
        done = cli(
            "policies", "shadow", SERVICE, json.dumps({"rate_limit_requests": rate}), "--json", server=plane
        )
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["revision"])

    reviewed = publish(50)
    replaced = publish(1)  # someone else's candidate, published after the review
    stale = cli(
        "policies", "promote", SERVICE, "--candidate", str(reviewed), "--reason", "A held", server=plane
    )
    assert stale.returncode == 6, stale.stderr
    assert f"was replaced at revision {replaced}" in stale.stderr
    assert cli("policies", "get", SERVICE, server=plane).returncode == 4  # nothing enforced
    done = cli(
        "policies", "promote", SERVICE, "--candidate", str(replaced), "--reason", "B held", server=plane
    )
    assert done.returncode == 0, done.stderr
    assert f"the candidate at revision {replaced} promoted" in done.stdout


def test_promote_clears_a_candidate_key_holding_garbage_on_every_replica(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    one, first = control_plane(etcd_server.endpoint, prefix)
    two, second = control_plane(etcd_server.endpoint, prefix)
    spawned += [one, two]
    published = cli("policies", "shadow", SERVICE, '{"rate_limit_requests": 50}', server=first)
    assert published.returncode == 0, published.stderr
    key = f"{prefix}/shadow/policies/{SERVICE}"
    etcdctl(etcd_server.endpoint, "put", key, "{not a policy")
    promoted = cli("policies", "promote", SERVICE, "--reason", "held", server=first)
    assert promoted.returncode == 0, promoted.stderr
    poll(lambda: etcdctl(etcd_server.endpoint, "get", key, "--print-value-only").strip() == "")
    for server in (first, second):
        poll(lambda s=server: not json.loads(cli("stats", "--json", server=s).stdout).get("shadow_services"))
        assert json.loads(cli("policies", "get", SERVICE, "--json", server=server).stdout)
