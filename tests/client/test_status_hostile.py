"""A peer's status details are not trusted: any bytes give a plain answer, never an exception."""

from __future__ import annotations

import os

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mission_control.client.errors import CircuitBreakerOpen, MissionControlError
from mission_control.client.status import MAX_READ_BYTES, read_status, remote_status_of, to_status
from mission_control.resilience.v1 import errors_pb2

CODES = list(grpc.StatusCode)
EXAMPLES = int(os.environ.get("MC_FUZZ_EXAMPLES", "1500"))


def _valid_status_bytes() -> bytes:
    return to_status(CircuitBreakerOpen("llm", 3, retry_after=2.0)).SerializeToString()


def _check(result, code):  # type: ignore[no-untyped-def]
    assert result.code is code
    if result.error is not None:
        assert isinstance(result.error, MissionControlError)
        assert result.error.grpc_code is code
        result.error.technical_display()
        result.error.user_friendly_display()
    if result.retry_after is not None:
        assert 0.0 <= result.retry_after <= 86400.0


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.sampled_from(CODES))
def test_random_bytes(data: bytes, code: grpc.StatusCode) -> None:
    _check(read_status(code, "m", data), code)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(_valid_status_bytes())
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(base) - 1))
        base[i] = draw(st.integers(0, 255))
    return bytes(base)


@settings(max_examples=EXAMPLES, deadline=None)
@given(mutated(), st.sampled_from(CODES))
def test_bit_flips_of_a_valid_status(data: bytes, code: grpc.StatusCode) -> None:
    _check(read_status(code, "m", data), code)


@st.composite
def hostile_details(draw: st.DrawFn) -> bytes:
    """Well-formed protobuf with hostile content: wrong codes, odd variants, huge values."""
    detail = errors_pb2.ErrorDetail(type=draw(st.integers(-5, 50)), severity=draw(st.integers(0, 9)))
    which = draw(st.sampled_from(["none", "cbo", "timeout", "config", "exhausted"]))
    text = draw(st.text(max_size=300))
    if which == "cbo":
        detail.circuit_breaker_open.service = text
        detail.circuit_breaker_open.failures = draw(st.integers(0, 2**32 - 1))
    elif which == "timeout":
        detail.operation_timeout.operation = text
        detail.operation_timeout.timeout_secs = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif which == "config":
        for _ in range(draw(st.integers(0, 100))):
            detail.configuration_error.violations.add(field=text, message=text)
    elif which == "exhausted":
        detail.resource_exhausted.current = draw(st.integers(0, 2**64 - 1))
        detail.resource_exhausted.limit = draw(st.integers(0, 2**64 - 1))
    detail.causes.extend(draw(st.lists(st.text(max_size=50), max_size=40)))
    status = status_pb2.Status(code=draw(st.integers(-3, 20)), message=text)
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.seconds = draw(st.integers(-(2**40), 2**40))
    retry.retry_delay.nanos = draw(st.integers(-999_999_999, 999_999_999))
    packed = any_pb2.Any()
    packed.Pack(retry)
    status.details.append(packed)
    junk = any_pb2.Any(type_url=draw(st.text(max_size=80)), value=draw(st.binary(max_size=64)))
    status.details.append(junk)
    return status.SerializeToString()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_details(), st.sampled_from(CODES))
def test_well_formed_but_hostile(data: bytes, code: grpc.StatusCode) -> None:
    _check(read_status(code, "m", data), code)


def test_oversized_payload_is_refused_plainly() -> None:
    result = read_status(grpc.StatusCode.UNAVAILABLE, "m", b"\x0a" * (MAX_READ_BYTES + 1))
    assert result.error is None
    assert result.problem is not None and "too large" in result.problem


def test_wrong_code_is_reported_not_trusted() -> None:
    result = read_status(grpc.StatusCode.INTERNAL, "m", _valid_status_bytes())
    assert result.error is None
    assert result.problem is not None and "code" in result.problem


def test_valid_status_reads_back() -> None:
    result = read_status(grpc.StatusCode.UNAVAILABLE, "m", _valid_status_bytes())
    assert isinstance(result.error, CircuitBreakerOpen)
    assert result.error.failures == 3 and result.retry_after == 2.0
    assert result.problem is None


class _BrokenCall(grpc.RpcError):
    def code(self):  # type: ignore[no-untyped-def]
        return grpc.StatusCode.UNAVAILABLE

    def details(self):  # type: ignore[no-untyped-def]
        return "x"

    def trailing_metadata(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("metadata gone")


def test_call_that_cannot_answer_is_a_plain_problem() -> None:
    result = remote_status_of(_BrokenCall())
    assert result.error is None and result.problem is not None
