"""Case 9: an upstream's latency rises from 50 ms to 2 s; time until the slow-call rule opens
the fleet breaker. Real processes: the stack's control plane and upstream, agent A calling
20 times a second, agent B (another process, no traffic) watching for the OPEN.

The policy: a call slower than 300 ms is slow; the breaker opens when half the calls judged
over the last second were slow (at least 5). A call is judged slow as soon as it passes
300 ms, while still running, so the rule does not wait for the 2 s calls to end."""

from __future__ import annotations

import time
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as cp
from mission_control.resilience.v1 import control_plane_pb2_grpc as cp_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.procs import Proc, agent
from tests.support.upstream import set_mode

from .common import Stack, percentile

SERVICE = "slow_llm"
RULE = policy_pb2.SlowCallPolicy(
    duration_threshold_secs=0.3, rate_threshold=0.5, minimum_calls=5, window_secs=1.0
)


def _breaker(s: Stack) -> cp.Breaker:
    with grpc.insecure_channel(s.plane_address) as channel:
        stub = cp_grpc.ControlPlaneServiceStub(channel)
        return stub.GetBreaker(cp.GetBreakerRequest(name=SERVICE), timeout=10).breaker


def _reset(s: Stack) -> None:
    with grpc.insecure_channel(s.plane_address) as channel:
        cp_grpc.ControlPlaneServiceStub(channel).SetBreakerState(
            cp.SetBreakerStateRequest(name=SERVICE, state=cp.BREAKER_STATE_CLOSED), timeout=10
        )


def slow_call_trip(s: Stack, rounds: int = 5) -> dict[str, Any]:
    """Seconds from the latency change to the OPEN decided by the control plane, and to
    agent B failing fast; and whether any of A's calls failed (none should: slow calls
    succeed, the later ones are refused by the breaker)."""
    s.put_policy(
        SERVICE,
        failure_threshold=1000,
        max_retries=0,
        wait_duration_secs=300,
        rate_limit_requests=10**9,
        timeout_secs=5,
        slow_call=RULE,
    )
    procs: list[Proc] = []
    decided, seen, failed = [], [], 0
    try:
        a = agent("slow-a", s.plane_address, s.upstream_address, SERVICE)
        b = agent("slow-b", s.plane_address, s.upstream_address, SERVICE)
        procs += [a, b]
        for _ in range(rounds):
            set_mode(s.upstream_address, "slow", delay_secs=0.05)
            a.send("pace 5 0.05")
            time.sleep(1.5)  # a second of fast calls fills the window
            b.send("until_fails_fast")
            changed = time.time()
            set_mode(s.upstream_address, "slow", delay_secs=2.0)
            watched = b.ask("noop", timeout=60)
            paced = a.ask("noop", timeout=60)["outcomes"]
            failed += sum(n for k, n in paced.items() if k not in ("ok", "CircuitBreakerOpen"))
            breaker = _breaker(s)
            if breaker.state == cp.BREAKER_STATE_OPEN:
                decided.append(breaker.opened_at.ToNanoseconds() / 1e9 - changed)
            if watched["outcome"] == "CircuitBreakerOpen":
                seen.append(watched["first_rejection"] - changed)
            set_mode(s.upstream_address, "ok")
            _reset(s)
            a.ask("until_state CLOSED")
            b.ask("until_state CLOSED")
    finally:
        for proc in procs:
            proc.kill()
    return {
        "rounds": rounds,
        "opened": len(decided),
        "decided_p50_s": percentile(decided, 50),
        "decided_max_s": max(decided) if decided else float("nan"),
        "seen_by_b_p50_s": percentile(seen, 50),
        "seen_by_b_max_s": max(seen) if seen else float("nan"),
        "calls_failed": failed,
    }
