"""Case 1: per-call overhead on a unary loopback echo, sync and aio, side by side.

Variants, measured in interleaved rounds so that machine noise hits them alike:
bare grpcio; a no-op interceptor; pybreaker + tenacity stacked by hand; our interceptor and
our protected channel (no grpc interceptor machinery) with the full policy (connected to a
control plane, outcomes reported); our interceptor with a candidate policy in shadow mode
evaluated beside it (its own service, published through the control plane); and "ask a
central service per call" (one extra unary RPC per call). Client CPU is this process's CPU
time; the upstream and the control plane run in other processes. The machine's load average
is sampled every round and reported.

``python -m bench.overhead [--quick]`` runs this case alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pybreaker
from mission_control.client.agent import MissionControl
from mission_control.interceptors import (
    aio_client_interceptors,
    aio_protected_channel,
    client_interceptor,
    protected_channel,
)
from mission_control.resilience.v1 import control_plane_pb2 as cp
from mission_control.resilience.v1 import control_plane_pb2_grpc as cp_grpc
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.otlp import Receiver

from .common import Stack, median, percentile

SERVICE = "llm_provider"
#: The same policy, with a candidate in shadow mode: its own service, so that only the
#: "+ shadow policy" variant evaluates a candidate.
SHADOWED = "llm_provider_shadowed"
#: The candidate: a rate limit, a bulkhead and a retry rule of its own, never refusing here.
CANDIDATE = {"rate_limit_requests": 10**8, "max_concurrent": 64, "max_retries": 1, "timeout_secs": 30}
REQUEST = pb.EchoRequest(text="hello")


class _Noop(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(client_call_details, request)


class _AioNoop(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(client_call_details, request)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def _sync_variants(
    s: Stack, mc: MissionControl, traced: MissionControl
) -> tuple[dict[str, Callable[[], Any]], list[Any]]:
    channels: list[Any] = []

    def chan(*interceptors: Any) -> pb_grpc.EchoServiceStub:
        channel = grpc.insecure_channel(s.upstream_address)
        channels.append(channel)
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        return pb_grpc.EchoServiceStub(channel)

    bare = chan()
    noop = chan(_Noop())
    ours = chan(client_interceptor(mc, service=SERVICE))
    direct_channel = grpc.insecure_channel(s.upstream_address)
    channels.append(direct_channel)
    direct = pb_grpc.EchoServiceStub(protected_channel(direct_channel, mc, service=SERVICE))
    shadowed = chan(client_interceptor(mc, service=SHADOWED))
    traced_channel = grpc.insecure_channel(s.upstream_address)
    channels.append(traced_channel)
    ours_traced = pb_grpc.EchoServiceStub(protected_channel(traced_channel, traced, service=SERVICE))
    plain = chan()
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    def glued() -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.1, max=10),
            retry=retry_if_exception(_unavailable),
            reraise=True,
        )
        return retrying(breaker.call, plain.Echo, REQUEST, timeout=30)

    cp_channel = grpc.insecure_channel(s.plane_address)
    channels.append(cp_channel)
    central = cp_grpc.ControlPlaneServiceStub(cp_channel)
    ask = cp.GetPolicyRequest(service=SERVICE)

    def per_call_check() -> Any:
        central.GetPolicy(ask, timeout=30)
        return plain.Echo(REQUEST, timeout=30)

    variants = {
        "bare grpcio": lambda: bare.Echo(REQUEST, timeout=30),
        "no-op interceptor": lambda: noop.Echo(REQUEST, timeout=30),
        "pybreaker + tenacity": glued,
        "mission-control interceptor": lambda: ours.Echo(REQUEST, timeout=30),
        "mission-control protected channel": lambda: direct.Echo(REQUEST, timeout=30),
        "mission-control + shadow policy": lambda: shadowed.Echo(REQUEST, timeout=30),
        "mission-control + telemetry": lambda: ours_traced.Echo(REQUEST, timeout=30),
        "central check per call": per_call_check,
    }
    return variants, channels


def _telemetry(endpoint: str) -> Any:
    """Telemetry exporting to ``endpoint``, configured the way users do: OTEL_* variables."""
    import os

    from mission_control.client.telemetry import telemetry_from_env

    saved = {k: os.environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_INSECURE")}
    os.environ.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true"})
    try:
        return telemetry_from_env("agent", "bench-agent-traced")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _measure_sync(fn: Callable[[], Any], n: int) -> tuple[list[float], float, float, float]:
    latencies = []
    cpu0, wall0, own0 = time.process_time(), time.perf_counter(), time.thread_time()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t)
    return latencies, time.process_time() - cpu0, time.perf_counter() - wall0, time.thread_time() - own0


async def _aio_variants(
    s: Stack, mc: MissionControl, traced: MissionControl
) -> tuple[dict[str, Callable[[], Awaitable[Any]]], list[Any]]:
    channels: list[Any] = []

    def chan(interceptors: Any = None) -> pb_grpc.EchoServiceStub:
        channel = grpc.aio.insecure_channel(s.upstream_address, interceptors=interceptors)
        channels.append(channel)
        return pb_grpc.EchoServiceStub(channel)

    bare = chan()
    noop = chan([_AioNoop()])
    ours = chan(aio_client_interceptors(mc, service=SERVICE))
    direct_channel = aio_protected_channel(s.upstream_address, mc, service=SERVICE)
    channels.append(direct_channel)
    direct = pb_grpc.EchoServiceStub(direct_channel)
    shadowed = chan(aio_client_interceptors(mc, service=SHADOWED))
    ours_traced = chan(aio_client_interceptors(traced, service=SERVICE))
    plain = chan()
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    async def glued() -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.1, max=10),
            retry=retry_if_exception(_unavailable),
            reraise=True,
        ):
            with attempt, breaker.calling():
                return await plain.Echo(REQUEST, timeout=30)
        return None

    cp_channel = grpc.aio.insecure_channel(s.plane_address)
    channels.append(cp_channel)
    central = cp_grpc.ControlPlaneServiceStub(cp_channel)
    ask = cp.GetPolicyRequest(service=SERVICE)

    async def per_call_check() -> Any:
        await central.GetPolicy(ask, timeout=30)
        return await plain.Echo(REQUEST, timeout=30)

    variants = {
        "bare grpcio": lambda: bare.Echo(REQUEST, timeout=30),
        "no-op interceptor": lambda: noop.Echo(REQUEST, timeout=30),
        "pybreaker + tenacity": glued,
        "mission-control interceptor": lambda: ours.Echo(REQUEST, timeout=30),
        "mission-control protected channel": lambda: direct.Echo(REQUEST, timeout=30),
        "mission-control + shadow policy": lambda: shadowed.Echo(REQUEST, timeout=30),
        "mission-control + telemetry": lambda: ours_traced.Echo(REQUEST, timeout=30),
        "central check per call": per_call_check,
    }
    return variants, channels


async def _measure_aio(fn: Callable[[], Awaitable[Any]], n: int) -> tuple[list[float], float, float, float]:
    latencies = []
    cpu0, wall0, own0 = time.process_time(), time.perf_counter(), time.thread_time()
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        latencies.append(time.perf_counter() - t)
    return latencies, time.process_time() - cpu0, time.perf_counter() - wall0, time.thread_time() - own0


Round = tuple[list[float], float, float, float]  # latencies, process CPU, wall, calling thread's CPU


def _summarise(samples: dict[str, list[Round]], n: int) -> list[dict[str, Any]]:
    """Per variant: latency, the process's CPU per call, and the calling thread's alone
    (the rest is grpc's poller and the agent's connection thread)."""
    rows = []
    for name, rounds in samples.items():
        lat = [x for r in rounds for x in r[0]]
        cpu_per_call = [r[1] / n * 1e6 for r in rounds]
        own_per_call = [r[3] / n * 1e6 for r in rounds]
        rate = [n / r[2] for r in rounds]
        rows.append(
            {
                "variant": name,
                "p50_ms": percentile(lat, 50) * 1e3,
                "p99_ms": percentile(lat, 99) * 1e3,
                "calls_per_s": median(rate),
                "cpu_us_per_call": median(cpu_per_call),
                "thread_cpu_us_per_call": median(own_per_call),
            }
        )
    bare = rows[0]
    for row in rows:
        row["p50_ratio"] = row["p50_ms"] / bare["p50_ms"]
        row["cpu_ratio"] = row["cpu_us_per_call"] / bare["cpu_us_per_call"]
        row["thread_cpu_ratio"] = row["thread_cpu_us_per_call"] / bare["thread_cpu_us_per_call"]
    return rows


def run(s: Stack, rounds: int = 7, n: int = 1000, warmup: int = 300) -> dict[str, Any]:
    s.put_policy(SERVICE, rate_limit_requests=10**9, timeout_secs=30)
    s.put_policy(SHADOWED, rate_limit_requests=10**9, timeout_secs=30)
    s.put_shadow_policy(SHADOWED, **CANDIDATE)
    mc = MissionControl("bench-agent", control_plane=s.plane_address, telemetry=False).start()
    receiver = Receiver().__enter__()  # a real OTLP/gRPC collector on loopback
    telemetry = _telemetry(receiver.endpoint)
    traced = MissionControl("bench-agent-traced", control_plane=s.plane_address, telemetry=telemetry).start()
    mc.wait_connected(30)
    traced.wait_connected(30)
    if mc.view.shadow_of(SHADOWED) is None:
        raise RuntimeError("the agent did not receive the candidate policy")
    try:
        variants, channels = _sync_variants(s, mc, traced)
        for fn in variants.values():
            for _ in range(warmup):
                fn()
        sync_samples: dict[str, list[Any]] = {k: [] for k in variants}
        loads = [os.getloadavg()[0]]
        for _ in range(rounds):
            for name, fn in variants.items():
                sync_samples[name].append(_measure_sync(fn, n))
            loads.append(os.getloadavg()[0])
        for channel in channels:
            channel.close()

        async def aio() -> dict[str, list[Any]]:
            variants_a, channels_a = await _aio_variants(s, mc, traced)
            for fn in variants_a.values():
                for _ in range(warmup):
                    await fn()
            samples: dict[str, list[Any]] = {k: [] for k in variants_a}
            for _ in range(rounds):
                for name, fn in variants_a.items():
                    samples[name].append(await _measure_aio(fn, n))
                loads.append(os.getloadavg()[0])
            for channel in channels_a:
                await channel.close()
            return samples

        aio_samples = asyncio.run(aio())
        batches = mc.connection.batches_sent if mc.connection else 0
    finally:
        mc.close()
        traced.close()
        receiver.__exit__()
    return {
        "calls_per_variant": rounds * n,
        "outcome_batches_sent": batches,
        "load": load_summary(loads),
        "sync": _summarise(sync_samples, n),
        "aio": _summarise(aio_samples, n),
    }


def load_summary(loads: list[float]) -> dict[str, Any]:
    """The 1-minute load average sampled while the case ran, against the cores there are."""
    return {"cores": os.cpu_count(), "min": min(loads), "median": median(loads), "max": max(loads)}


def load_text(load: dict[str, Any]) -> str:
    return (
        f"load avg {load['min']:.1f}-{load['max']:.1f} (median {load['median']:.1f}) on {load['cores']} cores"
    )


def decision_only(n: int = 100_000, rounds: int = 5) -> list[dict[str, Any]]:
    """The resilience layer alone around a no-op function (no gRPC), to isolate its cost."""
    from mission_control.client.policy import ServicePolicy

    policy = ServicePolicy(service=SERVICE, rate_limit_requests=10**9)
    mc = MissionControl("bench-agent", config={SERVICE: policy})
    ex = mc.executor
    shadowed = MissionControl("bench-agent-shadowed", config={SERVICE: policy})
    shadowed.view.set_shadow(SERVICE, ServicePolicy(service=SERVICE, **CANDIDATE))  # type: ignore[arg-type]
    shadowed_ex = shadowed.executor

    def noop(_left: float = 0.0) -> int:
        return 1

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    def glued() -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.1, max=10),
            retry=retry_if_exception(_unavailable),
            reraise=True,
        )
        return retrying(breaker.call, noop)

    variants: dict[str, Callable[[], Any]] = {
        "plain call": noop,
        "pybreaker + tenacity": glued,
        "mission-control executor": lambda: ex.run(SERVICE, noop, operation="Echo"),
        "mission-control executor + shadow policy": lambda: shadowed_ex.run(SERVICE, noop, operation="Echo"),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.process_time()
            for _ in range(n):
                fn()
            samples[name].append((time.process_time() - start) / n * 1e6)
    return [{"variant": k, "cpu_us_per_call": median(v)} for k, v in samples.items()]


def main() -> None:
    """Case 1 alone: ``python -m bench.overhead [--quick]``."""
    import sys

    from .__main__ import OVERHEAD_COLUMNS, _table
    from .common import stack

    rounds, n = (2, 200) if "--quick" in sys.argv else (7, 1000)
    with stack() as s:
        case1 = run(s, rounds=rounds, n=n)
    for kind in ("sync", "aio"):
        _table(f"1. per-call overhead, {kind} ({load_text(case1['load'])})", case1[kind], OVERHEAD_COLUMNS)


if __name__ == "__main__":
    main()
