"""Deadlines across hops: a call made inside a guard, a protected call or a protected
servicer gets min(its policy's timeout, the time left) — sync and asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.interceptors import (
    aio_server_interceptor,
    server_interceptor,
)

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel, sync_channel
from tests.support.upstream import Upstream

SERVICE = "agent_communication"
GUARDS = ["decorator", "async-decorator", "with", "async-with"]


def agent() -> MissionControl:
    p = policy(SERVICE, timeout_secs=5, max_retries=0)
    return MissionControl("hop-agent", config={SERVICE: p, "outer": policy("outer", timeout_secs=5)})


@pytest.fixture
def downstream() -> Iterator[Upstream]:
    with Upstream("downstream") as up:
        up.set("deadline")
        yield up


def seen(response: pb.EchoResponse) -> float:
    return float(response.text)


@pytest.mark.parametrize("mode", GUARDS)
async def test_a_call_inside_a_guard_gets_the_time_left(downstream: Upstream, mode: str, path: str) -> None:
    mc = agent()
    guard = mc.guard("outer", timeout=1.0)
    if mode in ("decorator", "with"):
        with sync_channel(path, grpc.insecure_channel(downstream.address), mc, service=SERVICE) as channel:
            stub = pb_grpc.EchoServiceStub(channel)

            def call() -> pb.EchoResponse:
                if mode == "with":
                    with guard:
                        return stub.Echo(pb.EchoRequest())
                return guard(lambda: stub.Echo(pb.EchoRequest()))()

            response = await asyncio.to_thread(call)
    else:
        async with aio_channel(path, downstream.address, mc, service=SERVICE) as channel:
            astub = pb_grpc.EchoServiceStub(channel)
            if mode == "async-with":
                async with guard:
                    response = await astub.Echo(pb.EchoRequest())
            else:

                async def acall() -> pb.EchoResponse:
                    return await astub.Echo(pb.EchoRequest())

                response = await guard(acall)()
    assert 0 < seen(response) <= 1.1  # the policy alone would give 5 s


class _Relay(pb_grpc.EchoServiceServicer):
    def __init__(self, stub: pb_grpc.EchoServiceStub) -> None:
        self.stub = stub

    def Echo(self, request, context):  # type: ignore[no-untyped-def]
        return self.stub.Echo(request)


class _AioRelay(pb_grpc.EchoServiceServicer):
    def __init__(self, stub: pb_grpc.EchoServiceStub) -> None:
        self.stub = stub

    async def Echo(self, request, context):  # type: ignore[no-untyped-def]
        return await self.stub.Echo(request)


@pytest.fixture(params=["sync", "aio"])
async def relay(request: pytest.FixtureRequest, downstream: Upstream, path: str) -> AsyncIterator[str]:
    """A servicer behind our server interceptor that calls the downstream, protected."""
    mc = agent()
    if request.param == "sync":
        channel = sync_channel(path, grpc.insecure_channel(downstream.address), mc, service=SERVICE)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[server_interceptor()])
        pb_grpc.add_EchoServiceServicer_to_server(_Relay(pb_grpc.EchoServiceStub(channel)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        yield f"127.0.0.1:{port}"
        server.stop(0)
        channel.close()
    else:
        achannel = aio_channel(path, downstream.address, mc, service=SERVICE)
        aserver = grpc.aio.server(interceptors=[aio_server_interceptor()])
        pb_grpc.add_EchoServiceServicer_to_server(_AioRelay(pb_grpc.EchoServiceStub(achannel)), aserver)
        port = aserver.add_insecure_port("127.0.0.1:0")
        await aserver.start()
        yield f"127.0.0.1:{port}"
        await aserver.stop(0)
        await achannel.close()


async def test_a_protected_servicer_passes_its_callers_time_on(relay: str) -> None:
    async with grpc.aio.insecure_channel(relay) as channel:
        response = await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(), timeout=1.0)
    assert 0 < seen(response) <= 1.1  # (grpc rounds a timeout on the wire); the policy says 5 s


async def test_a_plain_status_from_downstream_passes_through_unchanged(
    relay: str, downstream: Upstream
) -> None:
    downstream.set("fail", code="NOT_FOUND")
    async with grpc.aio.insecure_channel(relay) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(), timeout=5)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "downstream told to fail"
