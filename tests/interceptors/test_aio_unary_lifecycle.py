"""An aio unary call's life outside the plain ``await``: one never awaited still runs and
counts (as grpc's call does), one the caller cancels stops and counts as neither, and a
retry after a failed first attempt hands back the call that served."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from mission_control.client.agent import MissionControl

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel
from tests.support.upstream import Upstream


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def _agent() -> MissionControl:
    return MissionControl("a", config={"svc": policy("svc")})


async def test_a_call_never_awaited_runs_and_counts(upstream: Upstream, path: str) -> None:
    mc = _agent()
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        ended = asyncio.Event()
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
        call.add_done_callback(lambda _call: ended.set())
        assert await _until(lambda: state.tally.successes == 1)
        await asyncio.wait_for(ended.wait(), 5)
        assert (upstream.calls, state.bulkhead.in_flight, call.done()) == (1, 0, True)


async def test_a_cancelled_call_stops_and_counts_as_neither(upstream: Upstream, path: str) -> None:
    upstream.set("slow", delay_secs=2)
    mc = _agent()
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
        assert await _until(lambda: upstream.calls == 1)  # in flight
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled() and await call.code() is grpc.StatusCode.CANCELLED
        assert await _until(lambda: state.bulkhead.in_flight == 0)
        assert (state.tally.successes, state.tally.failures) == (0, 0)
        assert not call.cancel()  # over already


async def test_a_retried_call_answers_as_the_attempt_that_served(upstream: Upstream, path: str) -> None:
    upstream.set("fail", code="UNAVAILABLE", times=1)
    mc = _agent()
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
        assert (await call).text == "x"
        assert await call.code() is grpc.StatusCode.OK
        assert (upstream.calls, state.tally.failures, state.tally.successes) == (2, 1, 1)
