"""Where the protected aio channel and grpc's aio interceptors answer differently: each
hands back grpc's own objects (the channel's stream is grpc's call itself; behind the
interceptors, grpc's intercepted call), as the README's list of differences says."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel
from tests.support.upstream import Upstream


async def test_an_aio_streams_time_remaining(upstream: Upstream, path: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc")})
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        call = pb_grpc.EchoServiceStub(channel).EchoStream(pb.EchoRequest(text="a"))
        assert [r.text async for r in call] == ["a#0", "a#1", "a#2"]
        if path == "channel":
            assert 0 < call.time_remaining() <= 5  # the policy's deadline
        else:
            with pytest.raises(NotImplementedError):
                call.time_remaining()


def _no_endpoint(method: str, metadata: object) -> str:
    raise ZeroDivisionError("the endpoint function failed")


async def test_an_endpoint_function_that_raises(upstream: Upstream, path: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc")})
    async with aio_channel(path, upstream.address, mc, service="svc", endpoint=_no_endpoint) as channel:
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
        with pytest.raises(ZeroDivisionError):
            await call
        if path == "channel":
            assert await call.code() is grpc.StatusCode.UNKNOWN
            assert "the endpoint function failed" in await call.details()
        else:
            with pytest.raises(ZeroDivisionError):
                await call.code()
    assert upstream.calls == 0
