"""The slow-call rule across processes: real etcd, a control plane process, an upstream that
turns slow and two agent processes. One agent's slow calls (every one of them succeeds)
open the fleet breaker; the other agent, which makes no call, sees it OPEN."""

from __future__ import annotations

import json

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.fleets import fleet_of_two
from tests.support.polling import poll
from tests.support.procs import Proc
from tests.support.upstream import set_mode

SERVICE = "llm_provider"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    timeout_secs=10,
    max_retries=0,
    failure_threshold=50,
    wait_duration_secs=60,
    rate_limit_requests=10**6,
    slow_call=policy_pb2.SlowCallPolicy(
        duration_threshold_secs=0.2, rate_threshold=0.5, minimum_calls=4, window_secs=2.0
    ),
)


def test_slow_calls_open_the_fleet_breaker_while_no_call_fails(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    fleet = fleet_of_two(etcd_server.endpoint, prefix, spawned, POLICY, ("slow-caller", "watcher"))
    caller, watcher = fleet.agents
    upstream, stub = fleet.upstream, fleet.stub

    assert caller.ask("call 5")["outcomes"] == {"ok": 5}  # fast: nothing to see
    assert watcher.ask("state")["state"] in (None, "CLOSED")
    set_mode(upstream, "slow", delay_secs=0.5)
    watcher.send("until_state OPEN")
    paced = caller.ask("pace 3 0.05", timeout=90)["outcomes"]
    # slow calls succeeded for their callers; later ones were stopped by the open breaker
    assert set(paced) <= {"ok", "CircuitBreakerOpen"} and paced.get("ok", 0) >= 4, paced
    assert paced.get("CircuitBreakerOpen", 0) > 0, paced
    assert watcher.ask("noop")["state"] == "OPEN"

    breaker = stub.GetBreaker(pb.GetBreakerRequest(name=SERVICE), timeout=5).breaker
    assert breaker.state == pb.BREAKER_STATE_OPEN
    assert breaker.reason.startswith("slow calls ") and breaker.reason.endswith("≥ 50% over 2 s")
    assert breaker.slow_calls >= 2
    stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
    assert stats.total_errors == 0
    assert stats.slow_calls_by_service[SERVICE] >= 2
    stored = poll(
        lambda: etcdctl(etcd_server.endpoint, "get", f"{prefix}/breakers/{SERVICE}", "--print-value-only")
    )
    assert json.loads(stored)["state"] == "BREAKER_STATE_OPEN"
