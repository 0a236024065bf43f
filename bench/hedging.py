"""Case 10: hedged requests when a share of a backend's calls turns slow (50 ms → 2 s).

An Echo server in this process answers each call after a latency drawn from a seeded
generator: healthy, or 2 s for ``slow_share`` of the calls. Agents call it through a
protected channel from several threads. Variants, side by side in one run: healthy (no
slow calls), degraded without hedging, degraded with hedging at a fixed delay
(``max_attempts = 2``, ``delay_secs`` = the healthy p96) and with the adaptive delay
(:data:`ADAPTIVE`: the p95 of recent successful attempts, a hedge budget of 8 %); then
every call turning slow at once, where the slow-call breaker and a fallback are shown
too. Extra calls = upstream calls (the fallback's included) / logical calls − 1.

The goal, in its own terms: with hedging, the agents' p99 stays within
:data:`GOAL_P99_VS_HEALTHY` × the healthy p99 while fewer than :data:`GOAL_EXTRA_CALLS`
extra calls are sent; each hedged row says whether it was met. It also gives the *hedge
floor*: the delay plus the fastest healthy call, the soonest a hedge can answer. When more
than 1 % of calls turn slow, the p99 is one of the hedged calls and cannot be below that
floor: with every healthy call alike (the "flat" shape: 45–55 ms, delay near 55 ms) the
floor is about 2× the healthy p99 and the goal cannot be met by hedging at all; with a
spread of healthy latencies (most calls fast, a tail) it can.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from mission_control.client import MissionControl
from mission_control.client.policy import Hedging, RetryBudget, ServicePolicy, SlowCall
from mission_control.interceptors import protected_channel

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc

from .common import percentile

SLOW_SECS = 2.0
#: The goal: p99 with hedging within this many times the healthy p99 ...
GOAL_P99_VS_HEALTHY = 1.5
#: ... while fewer than this share of extra calls are sent.
GOAL_EXTRA_CALLS = 0.10


class _Latency(pb_grpc.EchoServiceServicer):
    def __init__(self, healthy: Any, slow_share: float, seed: int) -> None:
        self.healthy = healthy
        self.slow_share = slow_share
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.calls = 0

    def Echo(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        with self.lock:
            self.calls += 1
            slow = self.random.random() < self.slow_share
            delay = SLOW_SECS if slow else self.healthy(self.random)
        time.sleep(delay)
        return pb.EchoResponse(text=request.text)


#: Healthy latency shapes, both with p99 near 50 ms: "spread" (10 ms + exponential, mean
#: 10 ms: most calls fast, a tail) and "flat" (uniform 45–55 ms: every call alike).
SHAPES = {
    "spread": lambda r: 0.010 + r.expovariate(1 / 0.010),
    "flat": lambda r: r.uniform(0.045, 0.055),
}


#: The slow-call breaker of the "all slow" rows' breaker variant: open when half the calls of
#: the last 1 s ran over 0.5 s; its calls then go to a healthy fallback.
SLOW_CALL = SlowCall(duration_threshold_secs=0.5, rate_threshold=0.5, minimum_calls=10, window_secs=1)


def _server(servicer: pb_grpc.EchoServiceServicer) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    return server, address


def _agent(hedging: Hedging | None, breaker: bool) -> MissionControl:
    policy = ServicePolicy(
        service="echo", timeout_secs=10, max_retries=0, failure_threshold=1000,
        rate_limit_requests=1_000_000, idempotent=True, hedging=hedging,
        retry_budget=RetryBudget(ratio=0.2, min_retries_per_second=1),
    )  # fmt: skip
    if breaker:
        policy = policy.replace(slow_call=SLOW_CALL, fallbacks=("backup",))
    backup = policy.replace(service="backup", hedging=None, slow_call=None, fallbacks=())
    return MissionControl("bench-hedging", config={"echo": policy, "backup": backup})


def _run(
    shape: str, slow_share: float, hedging: Hedging | None, calls: int, threads: int,
    *, sudden: bool = False, breaker: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One variant: ``calls`` calls from ``threads`` threads after a warm-up; p50, p99,
    extra calls, the load, and the hedge delay the agent ended with. ``sudden``: the warm-up
    is healthy and ``slow_share`` of the calls turn slow as the measured calls begin;
    ``breaker``: the slow-call breaker, with a healthy backend as fallback, instead of hedges."""
    servicer = _Latency(SHAPES[shape], 0.0 if sudden else slow_share, seed=7)
    server, address = _server(servicer)
    fallback = _Latency(SHAPES[shape], 0.0, seed=8)
    backup_server, backup_address = _server(fallback)
    mc = _agent(hedging, breaker)
    backup = grpc.insecure_channel(backup_address)
    fallbacks = {"backup": backup} if breaker else None
    upstream = grpc.insecure_channel(address)
    channel = protected_channel(upstream, mc, service="echo", fallback_channels=fallbacks)
    stub = pb_grpc.EchoServiceStub(channel)

    def one(_: int) -> float:
        started = time.perf_counter()
        stub.Echo(pb.EchoRequest(text="x"), timeout=10)
        return time.perf_counter() - started

    try:
        with futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(threads * 10)))  # warm-up (not counted below)
            before = servicer.calls
            servicer.slow_share = slow_share
            latencies = list(pool.map(one, range(calls)))
        time.sleep(SLOW_SECS + 0.5)  # losers still running are counted too
        upstream_calls = servicer.calls - before + fallback.calls
        delay_secs = mc.executor.hedge_meter("echo").delay(hedging) if hedging else 0.0
    finally:
        channel.close()
        backup.close()
        mc.close()
        server.stop(0)
        backup_server.stop(0)
    return {
        "load_1m": os.getloadavg()[0],
        "delay_secs": delay_secs,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "extra_calls": upstream_calls / calls - 1,
        "latencies": latencies,
    }


#: The adaptive variant: hedge at the p95 of what the agent saw succeed lately (the fixed
#: delay until it has seen enough), never before 10 ms, hedges at most 8 % of calls.
ADAPTIVE = Hedging(
    max_attempts=2, delay_secs=0.1, delay_percentile=95, min_delay_secs=0.01, max_extra_ratio=0.08
)


def _row(
    shape: str, variant: str, row: dict[str, Any], healthy: dict[str, Any], delay: float | None
) -> dict[str, Any]:
    """One printed row; ``delay`` None for a variant that does not hedge."""
    vs_healthy = row["p99_ms"] / healthy["p99_ms"]
    met = vs_healthy <= GOAL_P99_VS_HEALTHY and row["extra_calls"] < GOAL_EXTRA_CALLS
    floor = None if delay is None else delay + min(healthy["latencies"])
    out = {k: v for k, v in row.items() if k != "latencies"}
    return {
        "shape": shape,
        "variant": variant,
        **out,
        "p99_vs_healthy": vs_healthy,
        "delay_ms": 0.0 if delay is None else delay * 1000,
        "floor_vs_healthy": 0.0 if floor is None else floor * 1000 / healthy["p99_ms"],
        "goal": "" if delay is None else ("yes" if met else "no"),
    }


def run(calls: int = 2000, threads: int = 8, slow_share: float = 0.03) -> list[dict[str, Any]]:
    """Per latency shape: healthy, degraded, degraded + hedging at a fixed delay (the healthy
    run's p96 as the agents measured it: what an operator would read off a dashboard, each
    hedge spending the retry budget) and degraded + adaptive hedging (:data:`ADAPTIVE`),
    side by side in one run. Then every call turning slow ("all slow", on the spread
    shape, fewer calls): no hedge can help there; the rows show what each sends."""
    rows = []
    for shape in SHAPES:
        healthy = _run(shape, 0.0, None, calls, threads)
        delay = percentile(healthy["latencies"], 96)
        fixed = Hedging(max_attempts=2, delay_secs=delay)
        rows.append(_row(shape, "healthy", healthy, healthy, None))
        rows.append(_row(shape, "degraded", _run(shape, slow_share, None, calls, threads), healthy, None))
        hedged = _run(shape, slow_share, fixed, calls, threads)
        rows.append(_row(shape, "+ fixed delay", hedged, healthy, delay))
        adaptive = _run(shape, slow_share, ADAPTIVE, calls, threads)
        rows.append(_row(shape, "+ adaptive p95", adaptive, healthy, adaptive["delay_secs"]))
    rows.extend(all_slow(max(100, calls // 5), threads * 4))
    return rows


def all_slow(calls: int, threads: int) -> list[dict[str, Any]]:
    """Every call turns slow (2 s) as the measured calls begin: no hedge can answer sooner.
    A fixed delay sends a hedge for every call the retry budget allows; the adaptive delay
    rises to the slow latency once enough slow answers are in the window, its budget
    bounding the hedges until then. Only the slow-call breaker, sending calls to a healthy
    fallback once open, shortens calls; those in flight as it opens still take 2 s.
    """
    healthy = _run("spread", 0.0, None, calls, threads)
    delay = percentile(healthy["latencies"], 96)
    rows = [_row("all slow", "healthy", healthy, healthy, None)]
    degraded = _run("spread", 1.0, None, calls, threads, sudden=True)
    rows.append(_row("all slow", "degraded", degraded, healthy, None))
    fixed = _run("spread", 1.0, Hedging(max_attempts=2, delay_secs=delay), calls, threads, sudden=True)
    rows.append(_row("all slow", "+ fixed delay", fixed, healthy, delay))
    adaptive = _run("spread", 1.0, ADAPTIVE, calls, threads, sudden=True)
    rows.append(_row("all slow", "+ adaptive p95", adaptive, healthy, adaptive["delay_secs"]))
    breaker = _run("spread", 1.0, None, calls, threads, sudden=True, breaker=True)
    rows.append(_row("all slow", "slow-call breaker + fallback", breaker, healthy, None))
    return rows
