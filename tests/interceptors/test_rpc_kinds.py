"""Every kind of RPC through the interceptors: what the caller gets back is the call, and
streams of every kind are admitted, bounded by the deadline and counted (never retried)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import CircuitBreakerOpen

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel
from tests.support.upstream import Upstream

STREAMS = ["unary-stream", "stream-unary", "stream-stream"]


def agent(**changes: object) -> MissionControl:
    p = policy("storage_backend", **changes)
    return MissionControl("kinds-agent", config={p.service: p})


def requests(n: int = 2) -> Iterator[pb.EchoRequest]:
    return iter([pb.EchoRequest(text=f"r{i}") for i in range(n)])


def sync_call(stub: pb_grpc.EchoServiceStub, kind: str, timeout: float | None = None) -> list[str]:
    if kind == "unary-stream":
        return [r.text for r in stub.EchoStream(pb.EchoRequest(text="a"), timeout=timeout)]
    if kind == "stream-unary":
        return [stub.EchoCollect(requests(), timeout=timeout).text]
    return [r.text for r in stub.EchoChat(requests(), timeout=timeout)]


async def aio_call(stub: pb_grpc.EchoServiceStub, kind: str, timeout: float | None = None) -> list[str]:
    async def gen() -> AsyncIterator[pb.EchoRequest]:
        for r in requests():
            yield r

    if kind == "unary-stream":
        return [r.text async for r in stub.EchoStream(pb.EchoRequest(text="a"), timeout=timeout)]
    if kind == "stream-unary":
        return [(await stub.EchoCollect(gen(), timeout=timeout)).text]
    return [r.text async for r in stub.EchoChat(gen(), timeout=timeout)]


def poll(condition, bound: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream("streamer") as up:
        yield up


@pytest.mark.parametrize("kind", STREAMS)
def test_sync_streams_are_protected(upstream: Upstream, kind: str, path: str) -> None:
    mc = agent(failure_threshold=2, wait_duration_secs=30)
    with sync_channel(
        path, grpc.insecure_channel(upstream.address), mc, service="storage_backend"
    ) as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        assert sync_call(stub, kind)
        upstream.set("fail", code="UNAVAILABLE")
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                sync_call(stub, kind)
        state = mc.view.get("storage_backend")
        assert poll(lambda: state.tally.failures == 2 and state.bulkhead.in_flight == 0)
        assert state.tally.successes == 1
        with pytest.raises(CircuitBreakerOpen):
            sync_call(stub, kind)
        assert upstream.calls == 3  # never retried


@pytest.mark.parametrize("kind", STREAMS)
async def test_aio_streams_are_protected(upstream: Upstream, kind: str, path: str) -> None:
    mc = agent(failure_threshold=2, wait_duration_secs=30)
    async with aio_channel(path, upstream.address, mc, service="storage_backend") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        assert await aio_call(stub, kind)
        upstream.set("fail", code="UNAVAILABLE")
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                await aio_call(stub, kind)
        state = mc.view.get("storage_backend")
        for _ in range(500):
            if state.tally.failures == 2 and state.bulkhead.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert (state.tally.successes, state.tally.failures, state.bulkhead.in_flight) == (1, 2, 0)
        with pytest.raises(CircuitBreakerOpen):
            await aio_call(stub, kind)
        assert upstream.calls == 3


@pytest.mark.parametrize("kind", STREAMS)
def test_sync_streams_get_the_policy_deadline(upstream: Upstream, kind: str, path: str) -> None:
    upstream.set("slow", delay_secs=3)
    mc = agent(timeout_secs=0.3)
    with sync_channel(
        path, grpc.insecure_channel(upstream.address), mc, service="storage_backend"
    ) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            sync_call(pb_grpc.EchoServiceStub(channel), kind)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_fast_failing_sync_streams_leave_no_bulkhead_place(upstream: Upstream, path: str) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    mc = agent(max_concurrent=4, rate_limit_requests=10_000)
    with sync_channel(
        path, grpc.insecure_channel(upstream.address), mc, service="storage_backend"
    ) as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        for _ in range(300):
            with pytest.raises(grpc.RpcError):
                list(stub.EchoStream(pb.EchoRequest(text="x")))
        state = mc.view.get("storage_backend")
        assert poll(lambda: state.tally.failures == 300)
        assert state.bulkhead.in_flight == 0


async def test_aio_unary_returns_the_call(upstream: Upstream, path: str) -> None:
    mc = agent()
    async with aio_channel(path, upstream.address, mc, service="storage_backend") as channel:
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="m"))
        ended = asyncio.Event()
        call.add_done_callback(lambda _call: ended.set())
        assert (await call).text == "m"
        assert await call.initial_metadata() is not None
        assert await call.trailing_metadata() is not None
        assert await call.code() is grpc.StatusCode.OK
        await asyncio.wait_for(ended.wait(), 5)


def test_sync_future_does_not_block_and_retries(upstream: Upstream, path: str) -> None:
    upstream.set("slow", delay_secs=1.5)
    mc = agent()
    with sync_channel(
        path, grpc.insecure_channel(upstream.address), mc, service="storage_backend"
    ) as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        future = stub.Echo.future(pb.EchoRequest(text="f"))
        assert not future.done()  # handed back while the upstream is still working
        ended = threading.Event()
        future.add_done_callback(lambda _f: ended.set())
        assert future.result(timeout=10).text == "f"
        assert ended.wait(5)
        assert future.code() is grpc.StatusCode.OK and future.trailing_metadata() is not None

        upstream.set("fail", code="UNAVAILABLE", times=1)
        retried = stub.Echo.future(pb.EchoRequest(text="g"))
        assert retried.result(timeout=10).text == "g"
        assert upstream.calls == 3
