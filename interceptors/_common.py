"""What the sync and asyncio server interceptors share: turning an exception into a status."""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import grpc
from mission_control.client.errors import AgentCriticalFailure, ErrorContext, MissionControlError
from mission_control.client.status import error_from_rpc_error, to_grpc_status

_log = logging.getLogger("mission_control.interceptors")

#: Set to 1 to send stack traces and exception texts to callers (never in production).
DEBUG_ENV = "MISSION_CONTROL_DEBUG_ERRORS"


def debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service, name


class _Passed(NamedTuple):
    """An upstream's status, passed on as it came (grpc.Status's fields)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class ErrorMapper:
    """Decides the status an exception raised by a servicer leaves with."""

    def __init__(self, agent: str | None, debug: bool | None) -> None:
        self.agent = agent
        self.debug = debug_from_env() if debug is None else debug

    def status_for(self, exc: BaseException, method: str) -> grpc.Status:
        service, operation = split_method(method)
        passed = _plain_status(exc)
        if passed is not None:
            return passed  # type: ignore[return-value]
        error = self._error_for(exc, service, operation)
        if error.context is None:
            error.context = ErrorContext(service=service, agent=self.agent or service, operation=operation)
        return to_grpc_status(error, include_stack_trace=self.debug)

    def _error_for(self, exc: BaseException, service: str, operation: str) -> MissionControlError:
        if isinstance(exc, MissionControlError):
            return exc
        if isinstance(exc, grpc.RpcError):
            forwarded = error_from_rpc_error(exc)
            if forwarded is not None:
                return forwarded
        _log.error("unhandled exception in %s/%s", service, operation, exc_info=exc)
        reason = f"unhandled {type(exc).__name__} in {operation or 'call'}"
        if self.debug and str(exc):
            reason += f": {exc}"
        error = AgentCriticalFailure(self.agent or service, reason)
        if self.debug:
            error.__cause__ = exc
        return error


def _plain_status(exc: BaseException) -> _Passed | None:
    """A gRPC error from a call the servicer made, without our taxonomy (``NOT_FOUND``,
    ``INVALID_ARGUMENT``, …): it leaves as it came, code, details and rich status details."""
    code: Any = getattr(exc, "code", None)
    if not isinstance(exc, grpc.RpcError) or not callable(code) or error_from_rpc_error(exc) is not None:
        return None
    status = code()
    if not isinstance(status, grpc.StatusCode) or status is grpc.StatusCode.OK:
        return None
    details: Any = getattr(exc, "details", None)
    text = details() if callable(details) else ""
    return _Passed(status, text or "", _rich_details(exc))


def _rich_details(exc: Any) -> tuple[tuple[str, str | bytes], ...]:
    """The upstream's ``grpc-status-details-bin`` (google.rpc.Status: ErrorInfo, …), kept."""
    trailing: Any = getattr(exc, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else ()
        return tuple((k, v) for k, v in metadata or () if k == "grpc-status-details-bin")
    except Exception:  # an error without readable metadata passes without details
        return ()
