"""An aio unary call that ended in a taxonomy error: awaiting it raises the typed error,
and ``code()``, ``details()`` and the metadata answer as the un-intercepted call does."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import CircuitBreakerOpen, MissionControlError, OperationTimeout

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import aio_channel
from tests.support.upstream import Upstream


async def _answers(call: grpc.aio.UnaryUnaryCall) -> tuple[object, ...]:
    trailing = await call.trailing_metadata()
    keys = sorted(key for key, _ in trailing or ())
    return await call.code(), await call.details(), keys


@pytest.mark.parametrize(
    ("mode", "fields"), [("fail", {"code": "UNAVAILABLE"}), ("taxonomy", {"text": "StorageFailure"})]
)
async def test_accessors_answer_as_the_plain_call(mode: str, fields: dict[str, str], path: str) -> None:
    mc = MissionControl("a", config={"llm_provider": policy("llm_provider", max_retries=0)})
    with Upstream("u") as up:
        up.set(mode, **fields)  # type: ignore[arg-type]
        async with (
            grpc.aio.insecure_channel(up.address) as plain,
            aio_channel(path, up.address, mc, service="llm_provider") as ours,
        ):
            expected_call = pb_grpc.EchoServiceStub(plain).Echo(pb.EchoRequest(text="x"))
            with pytest.raises(grpc.aio.AioRpcError):
                await expected_call
            call = pb_grpc.EchoServiceStub(ours).Echo(pb.EchoRequest(text="x"))
            with pytest.raises(MissionControlError):
                await call
            assert await _answers(call) == await _answers(expected_call)
            assert await call.initial_metadata() is not None
            assert (call.done(), call.cancelled()) == (True, False)


async def test_a_refused_call_answers_with_its_errors_status(path: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc", failure_threshold=1, max_retries=0)})
    with Upstream("u") as up:
        up.set("fail", code="UNAVAILABLE")
        async with aio_channel(path, up.address, mc, service="svc") as channel:
            stub = pb_grpc.EchoServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(pb.EchoRequest(text="x"))  # opens the breaker
            call = stub.Echo(pb.EchoRequest(text="x"))
            with pytest.raises(CircuitBreakerOpen):
                await call
            code, details, keys = await _answers(call)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "Circuit breaker OPEN" in str(details)
    assert keys == ["grpc-status-details-bin"]


@pytest.mark.parametrize("given", ["caller", "policy"])
async def test_a_timed_out_call_answers_with_the_timeouts_status(path: str, given: str) -> None:
    mc = MissionControl("a", config={"svc": policy("svc", timeout_secs=0.2 if given == "policy" else 5)})
    with Upstream("u") as up:
        up.set("slow", delay_secs=1)
        async with aio_channel(path, up.address, mc, service="svc") as channel:
            call = pb_grpc.EchoServiceStub(channel).Echo(
                pb.EchoRequest(text="x"), timeout=0.2 if given == "caller" else None
            )
            with pytest.raises(OperationTimeout) as raised:
                await call
            code, details, _ = await _answers(call)
    assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, str(raised.value))
