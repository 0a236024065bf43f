"""The real control plane in one process, timed from inside for the scaling case.

    python -m bench.scale_plane ETCD_ENDPOINT SERVICE

Prints ``PORT n`` once serving. Timing, kept while it runs: the event-loop time of every
lease round (the tick that leases a period out, and the loop's CPU until every stream took
its lease from its queue; the most loop CPU it took in one turn: the tick, or one slice of
its sends), of every breaker push for SERVICE (from the broadcast until every
stream took it), the event loop's lag, outcome summaries ingested. ``stats`` on stdin prints
them as one JSON line; ``push STATE`` forces SERVICE's breaker (pushed at once, stored after,
as every decision); ``quit`` ends. ``MC_SCALE_LEASE_SLICE``: leases sent per turn of the
loop (0: all in one).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from dataclasses import dataclass, field

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server import hub as hub_module
from mission_control.server.app import start_control_plane
from mission_control.server.control_plane import ControlPlane
from mission_control.server.gc_tuning import tune_gc
from mission_control.server.service import Limits
from mission_control.server.store import EtcdStore

from .common import rss_kib


@dataclass
class _Round:
    """One lease round or push: the messages it sent, and when the last was taken."""

    started: float
    cpu_started: float
    sync_s: float = 0.0
    #: the longest the loop was held by the round at once (the tick, or a slice of sends)
    stall_s: float = 0.0
    wall: float = 0.0  # epoch seconds at the push (matched with the agents' receive times)
    changed_at: int = 0
    pending: set[int] = field(default_factory=set)
    cpu_s: float | None = None
    done_s: float | None = None


@dataclass
class _Timings:
    rounds: list[_Round] = field(default_factory=list)
    pushes: list[_Round] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    gc_pauses: list[float] = field(default_factory=list)
    outcomes: int = 0
    open_by_message: dict[int, _Round] = field(default_factory=dict)

    def taken(self, message: object) -> None:
        found = self.open_by_message.pop(id(message), None)
        if found is None:
            return
        found.pending.discard(id(message))
        if not found.pending:
            found.cpu_s = time.thread_time() - found.cpu_started
            found.done_s = time.perf_counter() - found.started


def _instrument(plane: ControlPlane, service: str, timings: _Timings) -> None:
    hub, capacity = plane.hub, plane.capacity
    real_tick, real_send, real_broadcast = capacity.tick, capacity.send, hub.broadcast
    real_send_queued = capacity.send_queued
    current: list[_Round] = []

    def send(holder: str, message: pb.ConnectResponse) -> bool:
        if current:
            current[0].pending.add(id(message))
            timings.open_by_message[id(message)] = current[0]
        return real_send(holder, message)

    def tick(*, send: bool = True) -> None:
        before = {k: v.allocated for k, v in capacity.limits.items()}
        round_ = _Round(time.perf_counter(), time.thread_time())
        current[:] = [round_]
        real_tick(send=False)
        round_.stall_s = time.thread_time() - round_.cpu_started
        if any(v.allocated != before.get(k) for k, v in capacity.limits.items()):
            timings.rounds.append(round_)
        if send:
            capacity.send_queued()

    def send_queued(most: int | None = None) -> None:
        started = time.thread_time()
        real_send_queued(most)
        if current:
            round_ = current[0]
            round_.stall_s = max(round_.stall_s, time.thread_time() - started)
            if not capacity.queued:  # the round's last lease is in its stream's queue
                round_.sync_s = time.perf_counter() - round_.started
                current.clear()

    def broadcast(message: pb.ConnectResponse) -> None:
        if message.WhichOneof("message") != "breaker" or message.breaker.name != service:
            real_broadcast(message)
            return
        push = _Round(time.perf_counter(), time.thread_time(), wall=time.time())
        push.changed_at = message.breaker.changed_at.ToNanoseconds()
        if hub.agents:
            push.pending.add(id(message))
            # one message object for every stream: done when the last stream took it
            timings.open_by_message[id(message)] = push
        waiting = [len(hub.agents)]
        real_broadcast(message)
        push.sync_s = time.perf_counter() - push.started
        timings.pushes.append(push)
        counts[id(message)] = waiting

    counts: dict[int, list[int]] = {}
    real_next = hub_module.Subscriber.next

    async def next_(self: hub_module.Subscriber) -> object | None:
        item = await real_next(self)
        left = counts.get(id(item))
        if left is not None:
            left[0] -= 1
            if left[0] <= 0:
                del counts[id(item)]
                timings.taken(item)
        else:
            timings.taken(item)
        return item

    capacity.send = send
    capacity.tick = tick  # type: ignore[method-assign]
    capacity.send_queued = send_queued  # type: ignore[method-assign]
    hub.broadcast = broadcast  # type: ignore[method-assign]
    hub_module.Subscriber.next = next_  # type: ignore[method-assign]
    plane.outcome_listeners.append(lambda _agent, summary: _count(timings, summary))


def _count(timings: _Timings, summary: pb.OutcomeSummary) -> None:
    timings.outcomes += summary.successes + summary.failures


def _time_gc(timings: _Timings) -> None:
    started = [0.0]

    def callback(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            timings.gc_pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)


async def _lag(timings: _Timings, every: float = 0.01) -> None:
    while True:
        started = time.perf_counter()
        await asyncio.sleep(every)
        timings.lags.append(time.perf_counter() - started - every)


def _report(timings: _Timings, plane: ControlPlane) -> dict[str, object]:
    def rows(items: list[_Round]) -> list[dict[str, object]]:
        return [
            {
                "sync_s": r.sync_s,
                "stall_s": r.stall_s,
                "cpu_s": r.cpu_s,
                "done_s": r.done_s,
                "wall": r.wall,
                "changed_at": r.changed_at,
            }
            for r in items
        ]

    lags = sorted(timings.lags)
    report = {
        "rounds": rows(timings.rounds),
        "pushes": rows(timings.pushes),
        "lag_p99_s": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
        "lag_max_s": lags[-1] if lags else 0.0,
        "gc_max_s": max(timings.gc_pauses, default=0.0),
        "gc_s": sum(timings.gc_pauses),
        "outcomes": timings.outcomes,
        "agents": plane.hub.connected_agents,
        "rss_kib": rss_kib(os.getpid()),
        "cpu_s": time.process_time(),
    }
    timings.lags.clear()
    timings.gc_pauses.clear()
    return report


async def main() -> None:
    endpoint, service = sys.argv[1], sys.argv[2]
    store = EtcdStore([endpoint])
    limits = Limits(max_agents_per_peer=100_000, max_agents=100_000)
    running = await start_control_plane(store, "127.0.0.1:0", limits=limits)
    if os.environ.get("MC_SCALE_GC") != "default":
        tune_gc()  # as mission-control serve does
    if "MC_SCALE_LEASE_SLICE" in os.environ:  # 0: a round's leases all in one turn
        running.plane.lease_slice = int(os.environ["MC_SCALE_LEASE_SLICE"]) or None
    timings = _Timings()
    _instrument(running.plane, service, timings)
    _time_gc(timings)
    lag = asyncio.create_task(_lag(timings))
    print(f"PORT {running.port}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "stats":
            print(json.dumps(_report(timings, running.plane)), flush=True)
        elif words[0] == "push":  # a decision, as the engine makes one: pushed, then stored
            state = BreakerState[words[1]]
            loop.call_soon(running.plane.breakers.force, service, state, "bench")
            print(json.dumps({"pushed": words[1]}), flush=True)
    lag.cancel()
    await running.stop(0.5)


if __name__ == "__main__":
    if os.environ.get("MC_SCALE_PROFILE"):  # where the loop's time goes: a cProfile dump
        import cProfile

        cProfile.run("asyncio.run(main())", os.environ["MC_SCALE_PROFILE"])
    else:
        asyncio.run(main())
