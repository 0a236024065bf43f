"""How a stream that did not end on its own counts: dropped, cancelled by its caller, or
broken by the caller's own request iterator (sync and aio, real servers)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.breaker import BreakerState

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel
from tests.support.upstream import Upstream


class Trickle(pb_grpc.EchoServiceServicer):
    """Streams a message every 50 ms for 5 s; notes when each RPC ended, and how soon."""

    def __init__(self) -> None:
        self.ended: dict[str, float] = {}
        self.lock = threading.Lock()

    def EchoStream(self, request, context):  # type: ignore[no-untyped-def]
        began = time.monotonic()

        def note() -> None:
            with self.lock:
                self.ended[request.text] = time.monotonic() - began

        context.add_callback(note)
        for i in range(100):
            yield pb.EchoResponse(text=str(i))
            time.sleep(0.05)

    def EchoCollect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return pb.EchoResponse(text="+".join(r.text for r in request_iterator))


@pytest.fixture
def trickle() -> Iterator[tuple[Trickle, str]]:
    servicer = Trickle()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def _until(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


async def _until_async(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def _half_open(mc: MissionControl) -> None:
    """Open svc's local breaker with one failure and wait until it lets a probe through."""
    try:
        with mc.guard("svc"):
            raise ConnectionRefusedError("down")
    except ConnectionRefusedError:
        pass
    assert _until(lambda: mc.breaker("svc").state is BreakerState.HALF_OPEN)


def _probing_agent() -> MissionControl:
    return MissionControl(
        "stream-agent",
        config={"svc": policy("svc", failure_threshold=1, success_threshold=1, wait_duration_secs=0.1)},
    )


def test_a_dropped_sync_stream_is_cancelled_and_counts_as_neither(
    trickle: tuple[Trickle, str], path: str
) -> None:
    servicer, address = trickle
    mc = MissionControl("stream-agent", config={"svc": policy("svc", timeout_secs=10, max_concurrent=2)})
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="svc")
    stub = pb_grpc.EchoServiceStub(channel)
    for name in ("one", "two"):
        stream = stub.EchoStream(pb.EchoRequest(text=name))
        next(stream)
        del stream  # the caller stops reading and drops it
        gc.collect()
    state = mc.view.get("svc")
    assert _until(lambda: len(servicer.ended) == 2 and state.bulkhead.in_flight == 0)
    assert all(seconds < 5 for seconds in servicer.ended.values())  # cancelled, not run out
    assert (state.tally.successes, state.tally.failures) == (0, 0)
    assert next(stub.EchoStream(pb.EchoRequest(text="three"))).text == "0"  # a place is free
    channel.close()


def test_a_cancelled_sync_stream_hands_its_probe_back(trickle: tuple[Trickle, str], path: str) -> None:
    _, address = trickle
    mc = _probing_agent()
    _half_open(mc)
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="svc")
    stream = pb_grpc.EchoServiceStub(channel).EchoStream(pb.EchoRequest(text="probe"))
    state = mc.view.get("svc")
    assert state.local.permits_of("local") == 1
    next(stream)
    stream.cancel()
    assert _until(lambda: state.bulkhead.in_flight == 0 and state.local.permits_of("local") == 0)
    assert mc.breaker("svc").state is BreakerState.HALF_OPEN  # neither closed nor reopened
    assert (state.tally.successes, state.tally.failures) == (0, 1)
    channel.close()


async def test_a_cancelled_aio_stream_hands_its_probe_back(trickle: tuple[Trickle, str], path: str) -> None:
    _, address = trickle
    mc = _probing_agent()
    _half_open(mc)
    state = mc.view.get("svc")
    async with aio_channel(path, address, mc, service="svc") as channel:
        call = pb_grpc.EchoServiceStub(channel).EchoStream(pb.EchoRequest(text="probe"))
        await call.read()
        assert state.local.permits_of("local") == 1
        call.cancel()
        freed = await _until_async(lambda: not (state.bulkhead.in_flight or state.local.permits_of("local")))
        assert freed
        await asyncio.sleep(0.1)  # the outcome is recorded by a task: give it its turn
    assert mc.breaker("svc").state is BreakerState.HALF_OPEN  # a cancelled probe closes nothing
    assert (state.tally.successes, state.tally.failures) == (0, 1)


def _buggy_requests() -> Iterator[pb.EchoRequest]:
    yield pb.EchoRequest(text="a")
    raise ValueError("a bug while building request 2")


async def _buggy_requests_async() -> AsyncIterator[pb.EchoRequest]:
    yield pb.EchoRequest(text="a")
    raise ValueError("a bug while building request 2")


def test_the_callers_request_iterator_raising_counts_as_neither_sync(
    trickle: tuple[Trickle, str], path: str
) -> None:
    _, address = trickle
    mc = MissionControl("stream-agent", config={"svc": policy("svc", failure_threshold=2, max_retries=0)})
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="svc")
    stub = pb_grpc.EchoServiceStub(channel)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as raised:
            stub.EchoCollect(_buggy_requests(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNKNOWN  # grpc's own answer, unchanged
    state = mc.view.get("svc")
    assert _until(lambda: state.bulkhead.in_flight == 0)
    assert (state.tally.successes, state.tally.failures) == (0, 0)
    assert mc.breaker("svc").state is BreakerState.CLOSED
    assert stub.EchoCollect(iter([pb.EchoRequest(text="b")])).text == "b"
    channel.close()


async def test_the_callers_request_iterator_raising_counts_as_neither_aio(
    trickle: tuple[Trickle, str], path: str
) -> None:
    _, address = trickle
    mc = MissionControl("stream-agent", config={"svc": policy("svc", failure_threshold=2, max_retries=0)})
    state = mc.view.get("svc")
    async with aio_channel(path, address, mc, service="svc") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        for _ in range(3):
            with pytest.raises(asyncio.CancelledError):  # as grpc.aio does without us
                await stub.EchoCollect(_buggy_requests_async(), timeout=5)
        assert await _until_async(lambda: state.bulkhead.in_flight == 0)
        await asyncio.sleep(0.1)
        answer = await stub.EchoCollect(_requests_async("b"))
    assert answer.text == "b"
    assert await _until_async(lambda: state.tally.successes == 1)
    assert state.tally.failures == 0
    assert mc.breaker("svc").state is BreakerState.CLOSED


async def _requests_async(text: str) -> AsyncIterator[pb.EchoRequest]:
    yield pb.EchoRequest(text=text)


class _HoldsTheEnd(grpc.UnaryStreamClientInterceptor):
    """An inner interceptor whose callback runs before ours and waits for ``go``: the
    caller has let go of the finished stream before we hear that it ended."""

    def __init__(self) -> None:
        self.go = threading.Event()

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        call = continuation(client_call_details, request)
        call.add_callback(lambda: self.go.wait(5))
        return call


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_a_stream_that_ended_counts_even_if_dropped_before_we_hear(mode: str, path: str) -> None:
    mc = MissionControl("stream-agent", config={"svc": policy("svc", failure_threshold=10)})
    inner = _HoldsTheEnd()
    with Upstream("quick") as up:
        up.set(mode, code="UNAVAILABLE")
        channel = sync_channel(
            path, grpc.intercept_channel(grpc.insecure_channel(up.address), inner), mc, service="svc"
        )
        stream = pb_grpc.EchoServiceStub(channel).EchoStream(pb.EchoRequest(text="x"))
        if mode == "ok":
            assert [next(stream).text for _ in range(3)] == ["x#0", "x#1", "x#2"]
        assert _until(stream.done)  # it has ended; our callback waits behind the inner one
        del stream
        gc.collect()  # the stream object is gone: only grpc's state of it remains
        inner.go.set()
        state = mc.view.get("svc")
        assert _until(lambda: state.bulkhead.in_flight == 0)
        expected = (1, 0) if mode == "ok" else (0, 1)
        assert _until(lambda: (state.tally.successes, state.tally.failures) == expected)
        channel.close()
