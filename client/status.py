"""The taxonomy on the wire: ``google.rpc.Status`` in ``grpc-status-details-bin``.

An error leaves a process as a status whose details are our ``ErrorDetail`` (the typed
variant plus context), a ``google.rpc.ErrorInfo`` (reason, domain, flat metadata) so any
gRPC client can match it, a ``google.rpc.RetryInfo`` when a wait is known, a
``google.rpc.LocalizedMessage`` with the user-friendly text and, for configuration
errors, a ``google.rpc.BadRequest`` listing every field.

Reading never trusts the peer: :func:`read_status` accepts any bytes and returns a
:class:`RemoteStatus` that says what it found and, when the details were unusable,
why. It never raises.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from mission_control.resilience.v1 import errors_pb2

from .errors import (
    AgentCriticalFailure,
    CircuitBreakerOpen,
    ConfigurationError,
    ErrorContext,
    LLMProviderUnavailable,
    MissionControlError,
    OperationTimeout,
    ResourceExhausted,
    StorageFailure,
)

__all__ = [
    "DOMAIN",
    "MAX_DETAILS_BYTES",
    "RemoteStatus",
    "error_from_rpc_error",
    "read_status",
    "to_grpc_status",
    "to_status",
]

#: ``ErrorInfo.domain`` of every error we send.
DOMAIN = "mission-control"
#: Upper bound on the serialized Status we send (trailers are limited to ~8 KiB in total).
MAX_DETAILS_BYTES = 4096
#: Largest details blob we agree to parse from a peer.
MAX_READ_BYTES = 64 * 1024
_DETAILS_KEY = "grpc-status-details-bin"
_MAX_TEXT = 1024
_MAX_META = 256
_MAX_RETRY_AFTER = 86400.0

# error type -> (ErrorType enum value, ErrorDetail oneof field, ErrorInfo reason)
_WIRE: dict[str, tuple[int, str, str]] = {
    "AgentCriticalFailure": (1, "agent_critical_failure", "AGENT_CRITICAL_FAILURE"),
    "LLMProviderUnavailable": (2, "llm_provider_unavailable", "LLM_PROVIDER_UNAVAILABLE"),
    "StorageFailure": (3, "storage_failure", "STORAGE_FAILURE"),
    "CircuitBreakerOpen": (4, "circuit_breaker_open", "CIRCUIT_BREAKER_OPEN"),
    "ResourceExhausted": (5, "resource_exhausted", "RESOURCE_EXHAUSTED"),
    "ConfigurationError": (6, "configuration_error", "CONFIGURATION_ERROR"),
    "OperationTimeout": (7, "operation_timeout", "OPERATION_TIMEOUT"),
}
_BY_ONEOF = {oneof: etype for etype, (_, oneof, _) in _WIRE.items()}
_SEVERITY = {"low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """What a peer's status said.

    Attributes:
        code: the call's status code.
        message: the call's status message.
        error: the typed error, when the details carried a usable one.
        retry_after: seconds from ``RetryInfo``, clamped to [0, 1 day].
        problem: why details that were present could not be used, else None.
    """

    code: grpc.StatusCode
    message: str
    error: MissionControlError | None = None
    retry_after: float | None = None
    problem: str | None = None


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail_of(error: MissionControlError, include_stack_trace: bool, limit: int) -> errors_pb2.ErrorDetail:
    meta = min(limit, _MAX_META)
    etype, oneof, _ = _WIRE[error.error_type]
    detail = errors_pb2.ErrorDetail(type=etype, severity=_SEVERITY[error.severity.value])
    variant = getattr(detail, oneof)
    if isinstance(error, ConfigurationError):
        variant.field = _clip(error.field, limit)
        variant.message = _clip(error.message, limit)
        for field, message in error.violations[:64]:
            variant.violations.add(field=_clip(field, meta), message=_clip(message, limit))
    else:
        for name, value in error.fields().items():
            setattr(variant, name, _clip(value, limit) if isinstance(value, str) else value)
    if error.context is not None:
        ctx = error.context
        detail.context.service = _clip(ctx.service, meta)
        detail.context.agent = _clip(ctx.agent, meta)
        detail.context.operation = _clip(ctx.operation, meta)
        detail.context.session_id = _clip(ctx.session_id, meta)
        if ctx.user_id is not None:
            detail.context.user_id = _clip(ctx.user_id, meta)
    detail.causes.extend(_clip(c, limit) for c in list(error.cause_chain())[:16])
    if include_stack_trace:
        detail.stack_trace = _clip("".join(traceback.format_exception(error)), 2048)
    return detail


def _error_info(error: MissionControlError, limit: int) -> error_details_pb2.ErrorInfo:
    limit = min(limit, _MAX_META)
    info = error_details_pb2.ErrorInfo(reason=_WIRE[error.error_type][2], domain=DOMAIN)
    info.metadata["error_type"] = error.error_type
    info.metadata["severity"] = error.severity.value
    for name, value in error.fields().items():
        info.metadata[name] = _clip(str(value), limit)
    if isinstance(error, CircuitBreakerOpen):  # the proto variant has no field for these
        info.metadata["breaker_state"] = error.state
        if error.reason:
            info.metadata["reason"] = _clip(error.reason, limit)
    if error.context is not None:
        for name in ("service", "agent", "operation", "session_id"):
            value = getattr(error.context, name)
            if value:
                info.metadata[name] = _clip(value, limit)
    return info


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: MissionControlError, *, include_stack_trace: bool = False) -> status_pb2.Status:
    """The ``google.rpc.Status`` for an error, at most :data:`MAX_DETAILS_BYTES` long.

    The stack trace is only included when asked; when the status would be too large,
    the stack trace, then the causes, then the less essential details are dropped, and
    at last every text is cut shorter.
    """
    for limit in (_MAX_TEXT, 256, 64):
        status = _status_of(error, include_stack_trace, limit)
        if status.ByteSize() <= MAX_DETAILS_BYTES:
            break
    return status


def _status_of(error: MissionControlError, include_stack_trace: bool, limit: int) -> status_pb2.Status:
    detail = _detail_of(error, include_stack_trace, limit)
    extras: list[Message] = [_error_info(error, limit)]
    if error.retry_after is not None and error.retry_after >= 0:
        extras.append(error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after)))
    extras.append(
        error_details_pb2.LocalizedMessage(
            locale="en-US", message=_clip(error.user_friendly_display(), limit)
        )
    )
    if isinstance(error, ConfigurationError):
        bad = error_details_pb2.BadRequest()
        for field, message in error.violations[:64]:
            bad.field_violations.add(field=_clip(field, limit), description=_clip(message, limit))
        extras.append(bad)

    def build() -> status_pb2.Status:
        status = status_pb2.Status(
            code=error.grpc_code.value[0], message=_clip(error.technical_message, limit)
        )
        status.details.extend([_pack(detail), *(_pack(m) for m in extras)])
        return status

    status = build()
    for shrink in (_drop_stack, _drop_causes, _drop_extras, _drop_violations):
        if status.ByteSize() <= MAX_DETAILS_BYTES:
            break
        shrink(detail, extras)
        status = build()
    return status


def _drop_stack(detail: errors_pb2.ErrorDetail, extras: list[Message]) -> None:
    detail.stack_trace = ""


def _drop_causes(detail: errors_pb2.ErrorDetail, extras: list[Message]) -> None:
    del detail.causes[:]


def _drop_extras(detail: errors_pb2.ErrorDetail, extras: list[Message]) -> None:
    keep = (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo)
    extras[:] = [m for m in extras if isinstance(m, keep)]


def _drop_violations(detail: errors_pb2.ErrorDetail, extras: list[Message]) -> None:
    if detail.WhichOneof("error") == "configuration_error":
        del detail.configuration_error.violations[1:]


def to_grpc_status(error: MissionControlError, *, include_stack_trace: bool = False) -> grpc.Status:
    """A ``grpc.Status`` for ``context.abort_with_status`` (sync and aio servers)."""
    status = to_status(error, include_stack_trace=include_stack_trace)
    return _GrpcStatus(
        error.grpc_code,
        status.message,
        ((_DETAILS_KEY, status.SerializeToString()),),
    )


@dataclass(frozen=True)
class _GrpcStatus(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...]


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(min(seconds, _MAX_RETRY_AFTER) * 1e9))
    return d


def read_status(code: grpc.StatusCode, message: str, details: bytes | None) -> RemoteStatus:
    """Interpret a peer's status and its ``grpc-status-details-bin`` bytes. Never raises."""
    try:
        return _read(code, message, details)
    except Exception as exc:  # the peer is not trusted: any failure is a bad payload
        return RemoteStatus(code, message, problem=f"unreadable status details: {exc!r}"[:200])


def _read(code: grpc.StatusCode, message: str, details: bytes | None) -> RemoteStatus:
    if not details:
        return RemoteStatus(code, message)
    if not isinstance(details, bytes | bytearray):
        return RemoteStatus(code, message, problem="status details are not bytes")
    if len(details) > MAX_READ_BYTES:
        return RemoteStatus(code, message, problem=f"status details too large ({len(details)} bytes)")
    status = status_pb2.Status()
    status.ParseFromString(bytes(details))
    if status.code != code.value[0]:
        return RemoteStatus(
            code, message, problem=f"status details code {status.code} != call code {code.name}"
        )
    detail: errors_pb2.ErrorDetail | None = None
    info = error_details_pb2.ErrorInfo()
    retry_after: float | None = None
    for packed in status.details:
        if packed.Is(errors_pb2.ErrorDetail.DESCRIPTOR) and detail is None:
            detail = errors_pb2.ErrorDetail()
            packed.Unpack(detail)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = _seconds(retry.retry_delay)
        elif packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            packed.Unpack(info)
    if detail is None:
        return RemoteStatus(code, message, retry_after=retry_after)
    error, problem = _error_of(detail, retry_after, info)
    if error is not None and error.grpc_code != code:
        return RemoteStatus(
            code,
            message,
            retry_after=retry_after,
            problem=f"{error.error_type} cannot travel with code {code.name}",
        )
    return RemoteStatus(code, message, error=error, retry_after=retry_after, problem=problem)


def _seconds(d: duration_pb2.Duration) -> float:
    value = d.seconds + d.nanos / 1e9
    if not math.isfinite(value):
        return 0.0
    return min(max(value, 0.0), _MAX_RETRY_AFTER)


def _error_of(
    detail: errors_pb2.ErrorDetail, retry_after: float | None, info: error_details_pb2.ErrorInfo
) -> tuple[MissionControlError | None, str | None]:
    oneof = detail.WhichOneof("error")
    if oneof is None:
        return None, "ErrorDetail without an error variant"
    variant: Any = getattr(detail, oneof)
    kw: dict[str, Any] = {
        "retry_after": retry_after,
        "causes": [_clip(c) for c in detail.causes[:16]],
        "stack_trace": _clip(detail.stack_trace, 8192),
    }
    if detail.HasField("context"):
        ctx = detail.context
        kw["context"] = ErrorContext(
            service=ctx.service,
            agent=ctx.agent,
            operation=ctx.operation,
            session_id=ctx.session_id,
            user_id=ctx.user_id if ctx.HasField("user_id") else None,
        )
    etype = _BY_ONEOF[oneof]
    if etype == "CircuitBreakerOpen" and info.domain == DOMAIN:
        kw["state"] = info.metadata.get("breaker_state", "OPEN")  # one it does not know: OPEN
        kw["reason"] = _clip(info.metadata.get("reason", ""))
    return _BUILDERS[etype](variant, kw), None


def _config_error(v: Any, kw: dict[str, Any]) -> ConfigurationError:
    violations = [(x.field, x.message) for x in v.violations[:64]]
    return ConfigurationError(v.field, v.message, violations=violations, **kw)


def _timeout(v: Any, kw: dict[str, Any]) -> OperationTimeout:
    secs = v.timeout_secs if math.isfinite(v.timeout_secs) else 0.0
    return OperationTimeout(v.operation, secs, **kw)


_BUILDERS: dict[str, Any] = {
    "AgentCriticalFailure": lambda v, kw: AgentCriticalFailure(v.agent, v.reason, **kw),
    "LLMProviderUnavailable": lambda v, kw: LLMProviderUnavailable(v.provider, v.details, **kw),
    "StorageFailure": lambda v, kw: StorageFailure(v.backend, v.operation, v.details, **kw),
    "CircuitBreakerOpen": lambda v, kw: CircuitBreakerOpen(v.service, v.failures, **kw),
    "ResourceExhausted": lambda v, kw: ResourceExhausted(v.resource, v.current, v.limit, **kw),
    "ConfigurationError": _config_error,
    "OperationTimeout": _timeout,
}


def _trailer(metadata: Any, key: str) -> Any:
    for k, v in metadata or ():
        if k == key:
            return v
    return None


def remote_status_of(exc: grpc.RpcError) -> RemoteStatus:
    """Read a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``). Never raises."""
    try:
        code = exc.code()  # type: ignore[attr-defined]
        message = exc.details() or ""  # type: ignore[attr-defined]
        details = _trailer(exc.trailing_metadata(), _DETAILS_KEY)  # type: ignore[attr-defined]
    except Exception as err:
        return RemoteStatus(grpc.StatusCode.UNKNOWN, "", problem=f"not a finished call: {err!r}")
    if not isinstance(code, grpc.StatusCode):
        return RemoteStatus(grpc.StatusCode.UNKNOWN, str(message), problem="call has no status code")
    return read_status(code, str(message), details)


def error_from_rpc_error(exc: grpc.RpcError) -> MissionControlError | None:
    """The typed error a failed call carried, chained to the call's error; else None."""
    remote = remote_status_of(exc)
    if remote.error is None:
        return None
    remote.error.__cause__ = exc
    return remote.error
