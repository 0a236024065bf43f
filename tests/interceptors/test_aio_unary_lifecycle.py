"""An aio unary call's life outside the plain ``await``: one never awaited still runs and
counts (as grpc's call does), one the caller cancels stops and counts as neither, and a
retry after a failed first attempt hands back the call that served."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import CircuitBreakerOpen

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


async def test_a_call_awaited_twice_at_once_answers_both_and_counts_once(
    upstream: Upstream, path: str
) -> None:
    upstream.set("slow", delay_secs=0.2)
    mc = _agent()
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))

        async def wait() -> str:
            return (await call).text  # type: ignore[no-any-return]

        assert await asyncio.gather(wait(), wait()) == ["x", "x"]
        assert (upstream.calls, state.tally.successes, state.bulkhead.in_flight) == (1, 1, 0)


async def test_a_wait_given_up_without_a_cancel_still_counts_the_call(upstream: Upstream, path: str) -> None:
    upstream.set("slow", delay_secs=0.2)
    mc = _agent()
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        call = pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
        waiting = call.__await__()
        next(waiting)  # waits on the call in flight, then is closed: no task was cancelled
        waiting.close()
        assert await _until(lambda: state.tally.successes == 1)
        assert (upstream.calls, state.bulkhead.in_flight, (await call).text) == (1, 0, "x")


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


async def _give_up(call: object, how: str) -> None:
    """The caller stops waiting for ``call`` the ``how`` way (the upstream still works on it)."""
    if how == "wait_for":
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, 0.2)  # type: ignore[arg-type]
    elif how == "timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await call  # type: ignore[misc]
    else:
        task = asyncio.ensure_future(call)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("how", ["wait_for", "timeout", "task"])
async def test_a_caller_giving_up_cancels_the_call_and_frees_its_place(
    upstream: Upstream, path: str, how: str
) -> None:
    upstream.set("slow", delay_secs=4)
    mc = MissionControl("a", config={"svc": policy("svc", max_concurrent=1)})
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        await _give_up(stub.Echo(pb.EchoRequest(text="x")), how)
        # the upstream still sleeps on it for seconds: only a cancel frees the place now
        assert await _until(lambda: state.bulkhead.in_flight == 0, seconds=2)
        upstream.set("ok")
        assert (await stub.Echo(pb.EchoRequest(text="y"), timeout=5)).text == "y"
        assert (state.tally.successes, state.tally.failures) == (1, 0)


async def test_no_retry_goes_on_after_the_caller_gave_up(upstream: Upstream, path: str) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    slow_backoff = dataclasses.replace(policy("svc").backoff, initial_secs=0.5)
    mc = MissionControl("a", config={"svc": policy("svc", backoff=slow_backoff)})
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        await _give_up(pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x")), "wait_for")
        assert upstream.calls == 1  # the first retry was due 0.5 s after it
        assert not await _until(lambda: upstream.calls > 1, seconds=1)


async def test_an_upstream_cancelled_status_is_an_rpc_error_counted_once(
    upstream: Upstream, path: str
) -> None:
    upstream.set("fail", code="CANCELLED")
    mc = _agent()
    state = mc.view.get("svc")
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        task = asyncio.ensure_future(pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x")))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await task
        assert raised.value.code() is grpc.StatusCode.CANCELLED and not task.cancelled()
        assert upstream.calls == 1
        assert state.tally.successes + state.tally.failures == 1


async def test_a_caller_giving_up_on_a_probe_gives_its_permit_back(upstream: Upstream, path: str) -> None:
    one_probe = policy("svc", failure_threshold=1, success_threshold=1, wait_duration_secs=0.3, max_retries=0)
    mc = MissionControl("a", config={"svc": one_probe})
    async with aio_channel(path, upstream.address, mc, service="svc") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        upstream.set("fail", code="UNAVAILABLE")
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Echo(pb.EchoRequest(text="x"))  # opens the breaker
        assert await _until(lambda: mc.breaker("svc").state is BreakerState.HALF_OPEN)
        upstream.set("slow", delay_secs=4)
        await _give_up(stub.Echo(pb.EchoRequest(text="probe")), "wait_for")  # the one probe
        upstream.set("ok")
        loop = asyncio.get_running_loop()
        end = loop.time() + 2  # the abandoned probe's upstream still sleeps for seconds
        while True:
            try:
                assert (await stub.Echo(pb.EchoRequest(text="y"), timeout=1)).text == "y"
                break
            except CircuitBreakerOpen:
                assert loop.time() < end, "the probe permit did not come back"
                await asyncio.sleep(0.02)
        assert mc.breaker("svc").state is BreakerState.CLOSED
