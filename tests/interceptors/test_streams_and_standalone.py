"""Server-streaming calls through the interceptors, and an agent with no control plane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import CircuitBreakerOpen

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel
from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream("streamer") as up:
        yield up


def standalone(tmp_path: Path) -> MissionControl:
    config = tmp_path / "agent.toml"
    config.write_text(
        "[service_specific.storage_backend]\nfailure_threshold = 2\nmax_retries = 0\n"
        "wait_duration_secs = 30\n"
    )
    return MissionControl("stream-agent", config=config)


def test_sync_stream_is_admitted_counted_and_broken(upstream: Upstream, tmp_path: Path, path: str) -> None:
    mc = standalone(tmp_path)
    assert mc.policy("storage_backend").failure_threshold == 2  # from the file, no control plane
    channel = sync_channel(path, grpc.insecure_channel(upstream.address), mc, service="storage_backend")
    stub = pb_grpc.EchoServiceStub(channel)
    assert [r.text for r in stub.EchoStream(pb.EchoRequest(text="a"))] == ["a#0", "a#1", "a#2"]
    upstream.set("fail", code="UNAVAILABLE")
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            list(stub.EchoStream(pb.EchoRequest(text="b")))
    state = mc.view.get("storage_backend")
    for _ in range(200):  # outcomes are recorded by the call's done-callback, on grpc's thread
        if state.tally.failures == 2 and state.bulkhead.in_flight == 0:
            break
        time.sleep(0.01)
    assert (state.tally.successes, state.tally.failures) == (1, 2)
    assert state.bulkhead.in_flight == 0
    with pytest.raises(CircuitBreakerOpen):  # grpc raises an interceptor's error on iteration
        list(stub.EchoStream(pb.EchoRequest(text="c")))
    assert upstream.calls == 3
    channel.close()


async def test_aio_stream_is_admitted_counted_and_broken(
    upstream: Upstream, tmp_path: Path, path: str
) -> None:
    mc = standalone(tmp_path)
    async with aio_channel(path, upstream.address, mc, service="storage_backend") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        got = [r.text async for r in stub.EchoStream(pb.EchoRequest(text="a"))]
        assert got == ["a#0", "a#1", "a#2"]
        upstream.set("fail", code="UNAVAILABLE")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                async for _item in stub.EchoStream(pb.EchoRequest(text="b")):
                    pass
        state = mc.view.get("storage_backend")
        for _ in range(100):  # outcomes are recorded by a done-callback task
            if state.tally.failures == 2:
                break
            await asyncio.sleep(0.01)
        assert (state.tally.successes, state.tally.failures) == (1, 2)
        with pytest.raises(CircuitBreakerOpen):
            async for _item in stub.EchoStream(pb.EchoRequest(text="c")):
                pass
        assert upstream.calls == 3


@pytest.mark.parametrize("kind", ["unary-stream", "stream-stream"])
def test_a_refused_sync_stream_raises_when_iterated_not_at_the_call(
    upstream: Upstream, tmp_path: Path, path: str, kind: str
) -> None:
    mc = standalone(tmp_path)
    channel = sync_channel(path, grpc.insecure_channel(upstream.address), mc, service="storage_backend")
    stub = pb_grpc.EchoServiceStub(channel)
    upstream.set("fail", code="UNAVAILABLE")
    for _ in range(2):  # the threshold: the breaker opens
        with pytest.raises(Exception):  # noqa: B017 (the failure's own kind is not the point)
            stub.Echo(pb.EchoRequest(text="x"))
    if kind == "unary-stream":
        call = stub.EchoStream(pb.EchoRequest(text="a"))  # no raise here, as behind grpc's interceptor
    else:
        call = stub.EchoChat(iter([pb.EchoRequest(text="a")]))
    with pytest.raises(CircuitBreakerOpen):
        next(call)
    assert upstream.calls == 2
    channel.close()
