"""Case 2c: breaker propagation to agents whose own application keeps a thread busy.

The agent learns of a push on its connection's thread, which needs the GIL; a thread of
pure-Python work holds it for up to the interpreter's switch interval (5 ms by default)
at a time. Agent A trips the breaker; agents B (switch interval 5 ms) and C (1 ms), each
with a busy application thread, watch their views; both are timed on the same trips,
side by side, from A's third failing call to their first fail-fast call."""

from __future__ import annotations

import os
import time
from typing import Any

from mission_control.resilience.v1 import control_plane_pb2 as cp

from tests.support.procs import agent, python
from tests.support.upstream import set_mode

from .common import Stack
from .fleet_cases import _propagation_row, _set_breaker

#: variant -> the agent's switch interval (seconds)
VARIANTS = {"busy app, switch 5 ms (default)": 0.005, "busy app, switch 1 ms": 0.001}


def run(s: Stack, trips: int = 20) -> list[dict[str, Any]]:
    """``trips`` trips; one row per variant."""
    service = "prop_gil"
    s.put_policy(
        service, failure_threshold=3, max_retries=0, wait_duration_secs=300, rate_limit_requests=10**9
    )
    healthy = python("tests.support.upstream", "healthy")
    procs = [healthy]
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    loads: list[float] = []
    try:
        healthy_address = f"127.0.0.1:{healthy.port()}"
        set_mode(s.upstream_address, "fail", code="UNAVAILABLE")
        a = agent("gil-a", s.plane_address, s.upstream_address, service)
        watchers = {}
        for i, (variant, interval) in enumerate(VARIANTS.items()):
            env = dict(os.environ, MC_AGENT_SWITCH_INTERVAL=str(interval), MC_AGENT_BUSY_THREAD="1")
            watchers[variant] = agent(f"gil-w{i}", s.plane_address, healthy_address, service, env=env)
        procs += [a, *watchers.values()]
        for _ in range(trips):
            for proc in watchers.values():
                proc.send("until_fails_fast")
            time.sleep(0.05)
            tripped = a.ask("call 3")
            loads.append(os.getloadavg()[0])
            for variant, proc in watchers.items():
                seen = proc.ask("noop")
                if seen["first_rejection"] is not None and seen["outcome"] == "CircuitBreakerOpen":
                    samples[variant].append(seen["first_rejection"] - tripped["t_last"])
            _set_breaker(s, service, cp.BREAKER_STATE_CLOSED)
            for proc in (a, *watchers.values()):
                proc.ask("until_state CLOSED")
        set_mode(s.upstream_address, "ok")
    finally:
        for proc in procs:
            proc.kill()
    return [_propagation_row(v, trips, got, loads) for v, got in samples.items()]


if __name__ == "__main__":
    import json
    import sys

    from .common import stack

    with stack() as st:
        for row in run(st, int(sys.argv[1]) if len(sys.argv) > 1 else 20):
            print(json.dumps(row), flush=True)
