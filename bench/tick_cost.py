"""What the breakers' tick costs with a mass outage: N breakers OPEN with one opened_at.

Prints the CPU of one ordinary tick while they wait, the CPU of the tick(s) that move them
all to HALF_OPEN, and, run on an event loop the way the control plane runs it (the tick
every 20 ms, its burst in clock slices when the engine takes them), the longest a task that
wakes every 50 ms (a lease keep-alive's stand-in) waited past its time. Works against an
engine without slices too (the whole burst in one call), for a before/after.

    python -m bench.tick_cost [N] [WAIT]
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import sys
import time

from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

TICK = 0.02
SLICE = 0.01


def outage(n: int, wait: float) -> FleetBreakers:
    policies: dict[str, ServicePolicy] = {}

    def policy_of(service: str) -> ServicePolicy:
        return policies.setdefault(
            service, ServicePolicy(service, failure_threshold=2, wait_duration_secs=wait)
        )

    frozen: list[float | None] = [time.monotonic()]  # one opened_at for all, then real time

    def clock() -> float:
        return time.monotonic() if frozen[0] is None else frozen[0]

    breakers = FleetBreakers(policy_of, clock=clock)
    breakers.change_listeners.append(lambda message, old, move: message.SerializeToString())
    for i in range(n):
        breakers.record("agent", pb.OutcomeSummary(service=f"svc-{i:05d}", failures=2, trailing_failures=2))
    frozen[0] = None
    return breakers


def sliced(breakers: FleetBreakers) -> bool:
    return "slice_secs" in inspect.signature(breakers.tick).parameters


async def run(n: int, wait: float) -> dict[str, float]:
    opened = time.monotonic()
    breakers = outage(n, wait)
    print(f"{n} OPEN made in {time.monotonic() - opened:.1f} s; their wait ends {wait:.0f} s after the start")
    waiting: list[float] = []
    burst_cpu = 0.0
    burst_calls = 0
    lags: list[float] = []
    done = asyncio.Event()
    moved = 0

    async def keep_alive() -> None:
        while not done.is_set():
            due = time.monotonic() + 0.05
            await asyncio.sleep(0.05)
            lags.append(time.monotonic() - due)

    task = asyncio.create_task(keep_alive())
    while True:
        cpu = time.process_time()
        at_deadline = time.monotonic() >= opened + wait
        if sliced(breakers):
            moved += len(breakers.tick(SLICE))
            calls = 1
            while breakers.tick_cut:
                await asyncio.sleep(0)
                moved += len(breakers.tick(SLICE))
                calls += 1
        else:
            moved += len(breakers.tick())
            calls = 1
        used = time.process_time() - cpu
        if not at_deadline:
            waiting.append(used)
        if at_deadline and burst_calls == 0:
            burst_cpu, burst_calls = used, calls
        if moved >= n:
            break
        await asyncio.sleep(TICK)
    lag_at_burst = max(lags[-10:]) if lags else 0.0
    done.set()
    await task
    return {
        "n": n,
        "tick_cpu_ms_p50": statistics.median(waiting) * 1000,
        "tick_cpu_ms_max": max(waiting) * 1000,
        "burst_cpu_ms": burst_cpu * 1000,
        "burst_turns": burst_calls,
        "keepalive_late_ms_max": max(lags) * 1000,
        "keepalive_late_ms_at_burst": lag_at_burst * 1000,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15_000
    wait = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    result = asyncio.run(run(n, wait))
    print("engine:", "sliced" if sliced(outage(1, 1.0)) else "whole burst")
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
