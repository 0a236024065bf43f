"""What the control plane's loop spends with N breakers OPEN (a mass outage), none of them
named by a policy: a new stream's snapshot, the look for idle breakers (each second), and
the check of probe-permit marks (every 100 ms).

For the snapshot: the longest a task that wakes every 5 ms (a lease keep-alive's stand-in)
waited past its time while the snapshot was built — in CPU seconds of the loop's thread
between its sleep and its waking, which a busy machine does not stretch as it does the wall
clock — and the whole build's (wall) time; built at once
(``ControlPlane.snapshot``) and, when the control plane has it, a slice at a time as a stream
gets it (``snapshot_in_slices``). For the idle look and the mark check: the CPU of one call
with nothing due (median of 20), after a first one. Works against a control plane without
slices or heaps too (the old code), for a before/after.

    python -m bench.loop_cost [N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.store import EtcdStore

PERIOD = 0.005


def outage(n: int) -> ControlPlane:
    plane = ControlPlane(EtcdStore(["127.0.0.1:1"]))  # never started: no store is asked
    for i in range(n):
        summary = pb.OutcomeSummary(service=f"svc-{i:05d}", failures=5, trailing_failures=5)
        plane.breakers.record("agent", summary)
    return plane


async def held(build: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(the most loop CPU a task waking every PERIOD waited behind, the build's time) in ms."""
    lags: list[float] = []
    done = asyncio.Event()

    async def keep_alive() -> None:
        while not done.is_set():
            cpu = time.thread_time()
            await asyncio.sleep(PERIOD)
            lags.append(time.thread_time() - cpu)

    task = asyncio.create_task(keep_alive())
    await asyncio.sleep(0.05)
    lags.clear()
    started = time.perf_counter()
    await build()
    took = time.perf_counter() - started
    await asyncio.sleep(2 * PERIOD)
    done.set()
    await task
    return max(lags) * 1000, took * 1000


def cpu_ms(call: Callable[[], object], times: int = 20) -> float:
    call()  # the first one may take everything once
    used = []
    for _ in range(times):
        cpu = time.process_time()
        call()
        used.append(time.process_time() - cpu)
    return statistics.median(used) * 1000


async def run(n: int) -> dict[str, float | str]:
    plane = outage(n)
    out: dict[str, float | str] = {"n": n}

    async def whole() -> None:
        plane.snapshot()

    out["snapshot_whole_hold_cpu_ms"], out["snapshot_whole_ms"] = await held(whole)
    if hasattr(plane, "snapshot_in_slices"):

        async def sliced() -> None:
            await plane.snapshot_in_slices()

        out["snapshot_sliced_hold_cpu_ms"], out["snapshot_sliced_ms"] = await held(sliced)
    else:
        out["snapshot_sliced_hold_cpu_ms"] = "(no slices)"
    out["idle_look_cpu_ms"] = cpu_ms(plane.admission.idle)
    out["grant_check_leader_cpu_ms"] = cpu_ms(plane.grant_pause.check)
    plane.leadership = _Following()  # type: ignore[assignment]
    out["grant_check_follower_cpu_ms"] = cpu_ms(plane.grant_pause.check)
    return out


class _Following:
    """Stands for a leadership this replica does not hold (``ControlPlane.leading``)."""

    leading = False


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15_000
    for key, value in asyncio.run(run(n)).items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
