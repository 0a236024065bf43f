"""Case 10: hedged requests when a share of a backend's calls turns slow (50 ms → 2 s).

An Echo server in this process answers each call after a latency drawn from a seeded
generator: healthy, or 2 s for ``slow_share`` of the calls. Agents call it through the sync
interceptor from several threads. Variants: healthy (no slow calls), degraded without
hedging, degraded with hedging (``max_attempts = 2``, ``delay_secs`` = the healthy p95).
Extra calls = upstream calls / logical calls − 1.

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

import random
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from mission_control.client import MissionControl
from mission_control.client.policy import Hedging, RetryBudget, ServicePolicy
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


def _run(shape: str, slow_share: float, hedging: Hedging | None, calls: int, threads: int) -> dict[str, Any]:
    servicer = _Latency(SHAPES[shape], slow_share, seed=7)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    policy = ServicePolicy(
        service="echo", timeout_secs=10, max_retries=0, failure_threshold=1000,
        rate_limit_requests=1_000_000, idempotent=True, hedging=hedging,
        retry_budget=RetryBudget(ratio=0.2, min_retries_per_second=1),
    )  # fmt: skip
    mc = MissionControl("bench-hedging", config={"echo": policy})
    channel = protected_channel(grpc.insecure_channel(address), mc, service="echo")
    stub = pb_grpc.EchoServiceStub(channel)

    def one(_: int) -> float:
        started = time.perf_counter()
        stub.Echo(pb.EchoRequest(text="x"), timeout=10)
        return time.perf_counter() - started

    try:
        with futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(threads * 10)))  # warm-up (not counted below)
            before = servicer.calls
            latencies = list(pool.map(one, range(calls)))
        time.sleep(SLOW_SECS + 0.5)  # losers still running are counted too
        upstream_calls = servicer.calls - before
    finally:
        channel.close()
        mc.close()
        server.stop(0)
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "extra_calls": upstream_calls / calls - 1,
        "latencies": latencies,
    }


def run(calls: int = 2000, threads: int = 8, slow_share: float = 0.03) -> list[dict[str, Any]]:
    """Per latency shape: healthy, degraded, degraded + hedging (delay = the healthy run's
    p96 latency, as measured by the agents: what an operator would read off a dashboard)."""
    rows = []
    for shape in SHAPES:
        healthy = _run(shape, 0.0, None, calls, threads)
        delay = percentile(healthy["latencies"], 96)
        degraded = _run(shape, slow_share, None, calls, threads)
        hedged = _run(shape, slow_share, Hedging(max_attempts=2, delay_secs=delay), calls, threads)
        floor = delay + min(healthy["latencies"])
        for variant, row in (("healthy", healthy), ("degraded", degraded), ("degraded + hedging", hedged)):
            row.pop("latencies", None)
            vs_healthy = row["p99_ms"] / healthy["p99_ms"]
            met = vs_healthy <= GOAL_P99_VS_HEALTHY and row["extra_calls"] < GOAL_EXTRA_CALLS
            hedging = variant.endswith("hedging")
            rows.append(
                {
                    "shape": shape,
                    "variant": variant,
                    **row,
                    "p99_vs_healthy": vs_healthy,
                    "delay_ms": delay * 1000 if hedging else 0.0,
                    "floor_vs_healthy": floor * 1000 / healthy["p99_ms"] if hedging else 0.0,
                    "goal": ("yes" if met else "no") if hedging else "",
                }
            )
    return rows
