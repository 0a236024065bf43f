"""The error taxonomy: one exception class per kind of failure, matchable across processes.

Every class derives from :class:`MissionControlError` and carries the fields of its
variant as attributes, a fixed ``error_type``, ``severity`` and ``grpc_code``, and two
displays: :meth:`~MissionControlError.technical_display` for developers (message plus
the cause chain) and :meth:`~MissionControlError.user_friendly_display` for users.

Context chains use Python's own chaining: ``raise StorageFailure(...) from exc`` keeps
the original error, ``err.add_note(...)`` adds context. On the wire an error travels as
a ``google.rpc.Status`` (see :mod:`mission_control.client.status`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

__all__ = [
    "AgentCriticalFailure",
    "CircuitBreakerOpen",
    "ConfigurationError",
    "ErrorContext",
    "LLMProviderUnavailable",
    "MissionControlError",
    "OperationTimeout",
    "ResourceExhausted",
    "Severity",
    "StorageFailure",
    "error_class",
]


class Severity(enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """Where an error happened. ``user_id`` only for user-facing operations (privacy)."""

    service: str = ""
    agent: str = ""
    operation: str = ""
    session_id: str = ""
    user_id: str | None = None


class MissionControlError(Exception):
    """Base of the taxonomy. ``except MissionControlError`` catches every variant.

    Attributes:
        context: where the error happened, when known.
        retry_after: seconds after which a retry may succeed, when known
            (time left on an open breaker, until tokens return).
        causes: the cause chain as text, when the error came from another process.
        stack_trace: the sender's stack trace, only when the sender enabled it.
    """

    error_type: ClassVar[str] = "MissionControlError"
    severity: ClassVar[Severity] = Severity.HIGH
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    _fields: ClassVar[tuple[str, ...]] = ()
    _message: ClassVar[str] = ""
    _friendly: ClassVar[str] = ""

    def __init__(
        self,
        *,
        context: ErrorContext | None = None,
        retry_after: float | None = None,
        causes: Sequence[str] = (),
        stack_trace: str = "",
    ) -> None:
        self.context = context
        self.retry_after = retry_after
        self.causes: tuple[str, ...] = tuple(causes)
        self.stack_trace = stack_trace
        super().__init__(self.technical_message)

    @property
    def technical_message(self) -> str:
        """The variant's one-line technical message (the seed's ``#[error]`` text)."""
        return self._message.format(**self.fields())

    def fields(self) -> dict[str, Any]:
        """The variant's own fields, by name."""
        return {name: getattr(self, name) for name in self._fields}

    def cause_chain(self) -> Iterator[str]:
        """The causes as text, the direct cause first: local ones, then remote ones."""
        seen: set[int] = {id(self)}
        exc: BaseException | None = self.__cause__ or (
            None if self.__suppress_context__ else self.__context__
        )
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            yield _describe(exc)
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        yield from self.causes

    def technical_display(self) -> str:
        """Full technical detail: the message, every cause, and any notes."""
        parts = [self.technical_message, *self.cause_chain()]
        text = ": ".join(p for p in parts if p)
        notes = getattr(self, "__notes__", ())
        return "\n".join([text, *(f"  note: {n}" for n in notes)])

    def user_friendly_display(self) -> str:
        """A human-readable summary without technical jargon."""
        return self._friendly.format(**self.fields())

    def __str__(self) -> str:
        return self.technical_message

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields().items())
        return f"{type(self).__name__}({args})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only __init__ do not pickle by default; agents pass
        # errors between worker processes.
        return (_rebuild, (type(self), self.fields(), self._extras()))

    def _extras(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "retry_after": self.retry_after,
            "causes": self.causes,
            "stack_trace": self.stack_trace,
        }


def _rebuild(cls: type[MissionControlError], fields: dict[str, Any], extras: dict[str, Any]):
    return cls(**fields, **extras)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MissionControlError):
        return exc.technical_message
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code()
        return f"via gRPC {getattr(code, 'name', code)}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AgentCriticalFailure(MissionControlError):
    """An agent cannot continue. Not retried."""

    error_type = "AgentCriticalFailure"
    severity = Severity.CRITICAL
    grpc_code = grpc.StatusCode.INTERNAL
    _fields = ("agent", "reason")
    _message = "Agent '{agent}' critical failure: {reason}"
    _friendly = "Agent '{agent}' encountered a critical error. Check logs for details."

    def __init__(self, agent: str, reason: str, **kw: Any) -> None:
        self.agent = agent
        self.reason = reason
        super().__init__(**kw)


class LLMProviderUnavailable(MissionControlError):
    """A model provider does not answer. Retried."""

    error_type = "LLMProviderUnavailable"
    severity = Severity.HIGH
    grpc_code = grpc.StatusCode.UNAVAILABLE
    _fields = ("provider", "details")
    _message = "LLM provider '{provider}' unavailable: {details}"
    _friendly = "AI service '{provider}' is temporarily unavailable. Using backup models."

    def __init__(self, provider: str, details: str, **kw: Any) -> None:
        self.provider = provider
        self.details = details
        #: True while a backup model serves instead (the seed's text is then true);
        #: the executor sets ``backups_tried`` when it hands the error to a caller.
        self.backup_serving = False
        self.backups_tried = 0
        super().__init__(**kw)

    def user_friendly_display(self) -> str:
        """The seed's "Using backup models." only while a backup serves; otherwise what
        happened: no backup, or every backup failed too."""
        if self.backup_serving:
            return super().user_friendly_display()
        if self.backups_tried:
            return f"AI service '{self.provider}' is temporarily unavailable, and so are its backup models."
        return f"AI service '{self.provider}' is temporarily unavailable. Please try again later."


class StorageFailure(MissionControlError):
    """A storage backend failed during an operation. Retried."""

    error_type = "StorageFailure"
    severity = Severity.HIGH
    grpc_code = grpc.StatusCode.UNAVAILABLE
    _fields = ("backend", "operation", "details")
    _message = "Storage backend '{backend}' failed during {operation}: {details}"
    _friendly = "Storage system '{backend}' is experiencing issues. Your data is safe."

    def __init__(self, backend: str, operation: str, details: str, **kw: Any) -> None:
        self.backend = backend
        self.operation = operation
        self.details = details
        super().__init__(**kw)


class CircuitBreakerOpen(MissionControlError):
    """Calls are stopped because the service's breaker is open. Fails fast, not retried;
    ``retry_after`` is the time the breaker stays open.

    Attributes:
        state: the breaker state that refused the call: "OPEN" (the seed's message),
            "HALF_OPEN" (only its probe calls pass, and this was not one) or "FORCED_OPEN"
            (an operator's; ``failures`` then says nothing of why).
        reason: the operator's reason of a FORCED_OPEN ("" when none was given).
    """

    error_type = "CircuitBreakerOpen"
    severity = Severity.MEDIUM
    grpc_code = grpc.StatusCode.UNAVAILABLE
    _fields = ("service", "failures")
    _message = "Circuit breaker OPEN for service '{service}' (failed {failures} times)"
    _friendly = "Service '{service}' is temporarily paused to prevent issues. Will retry automatically."

    #: The states a refusal names (any other read from a peer is taken as OPEN).
    STATES = ("OPEN", "HALF_OPEN", "FORCED_OPEN")

    def __init__(
        self, service: str, failures: int, *, state: str = "OPEN", reason: str = "", **kw: Any
    ) -> None:
        self.service = service
        self.failures = failures
        self.state = state if state in self.STATES else "OPEN"
        self.reason = reason if self.state == "FORCED_OPEN" else ""
        super().__init__(**kw)

    @property
    def technical_message(self) -> str:
        """The seed's text for an OPEN breaker; for the other states what holds instead."""
        if self.state == "FORCED_OPEN":
            why = f": {self.reason}" if self.reason else ", no reason given"
            return (
                f"Circuit breaker FORCED_OPEN for service '{self.service}' (forced open by an operator{why})"
            )
        if self.state == "HALF_OPEN":
            return (
                f"Circuit breaker HALF_OPEN for service '{self.service}' "
                f"(failed {self.failures} times; only its probe calls pass)"
            )
        return super().technical_message

    def user_friendly_display(self) -> str:
        """Nothing retries a call refused by an open breaker (a fallback serves it, when
        there is one): the text says when to try again instead of the seed's "Will retry
        automatically"."""
        if self.state == "FORCED_OPEN":
            return f"Service '{self.service}' is paused by an operator."
        paused = f"Service '{self.service}' is temporarily paused to prevent issues."
        wait = self.retry_after
        if wait is not None and wait >= 1:
            return f"{paused} Please try again in {math.ceil(wait)} s."
        return f"{paused} Please try again shortly."

    def __repr__(self) -> str:
        return (
            f"CircuitBreakerOpen(service={self.service!r}, failures={self.failures!r}, state={self.state!r})"
        )

    def _extras(self) -> dict[str, Any]:
        return {**super()._extras(), "state": self.state, "reason": self.reason}


class ResourceExhausted(MissionControlError):
    """A limit is used up (rate, token budget, concurrency). Retried only after
    ``retry_after`` and within the deadline."""

    error_type = "ResourceExhausted"
    severity = Severity.MEDIUM
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    _fields = ("resource", "current", "limit")
    _message = "Resource exhausted: {resource} at {current}/{limit}"
    _friendly = "System resources for '{resource}' are at capacity. Processing will continue shortly."

    def __init__(self, resource: str, current: int, limit: int, **kw: Any) -> None:
        self.resource = resource
        self.current = current
        self.limit = limit
        super().__init__(**kw)


class ConfigurationError(MissionControlError):
    """A configuration value is invalid. Not retried.

    ``field``/``message`` name the first problem; ``violations`` lists every problem
    found as ``(field, message)`` pairs, the first included.
    """

    error_type = "ConfigurationError"
    severity = Severity.HIGH
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    _fields = ("field", "message")
    _message = "Configuration error in '{field}': {message}"
    _friendly = "Configuration setting '{field}' needs adjustment. See documentation."

    def __init__(
        self,
        field: str,
        message: str,
        *,
        violations: Sequence[tuple[str, str]] = (),
        **kw: Any,
    ) -> None:
        self.field = field
        self.message = message
        found = [(str(f), str(m)) for f, m in violations]
        if (field, message) not in found:
            found.insert(0, (field, message))
        self.violations: tuple[tuple[str, str], ...] = tuple(found)
        super().__init__(**kw)

    @classmethod
    def from_violations(cls, violations: Sequence[tuple[str, str]], **kw: Any) -> ConfigurationError:
        """One error naming every violation; ``violations`` must not be empty."""
        field, message = violations[0]
        return cls(field, message, violations=violations, **kw)

    def technical_display(self) -> str:
        text = super().technical_display()
        if len(self.violations) > 1:
            text += "".join(f"\n  {f}: {m}" for f, m in self.violations[1:])
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config, (self.violations, self._extras()))


def _rebuild_config(violations: tuple[tuple[str, str], ...], extras: dict[str, Any]):
    return ConfigurationError.from_violations(violations, **extras)


class OperationTimeout(MissionControlError):
    """An operation did not finish within its time limit. Retried per policy."""

    error_type = "OperationTimeout"
    severity = Severity.MEDIUM
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    _fields = ("operation", "timeout_secs")
    _message = "Operation '{operation}' timed out after {timeout_secs:g}s"
    _friendly = "Operation '{operation}' is taking longer than expected. Results will be available soon."

    def __init__(self, operation: str, timeout_secs: float, **kw: Any) -> None:
        self.operation = operation
        self.timeout_secs = float(timeout_secs)
        super().__init__(**kw)


_BY_TYPE: dict[str, type[MissionControlError]] = {
    cls.error_type: cls
    for cls in (
        AgentCriticalFailure,
        LLMProviderUnavailable,
        StorageFailure,
        CircuitBreakerOpen,
        ResourceExhausted,
        ConfigurationError,
        OperationTimeout,
    )
}


def error_class(error_type: str) -> type[MissionControlError]:
    """The class for a type name such as ``"CircuitBreakerOpen"``; KeyError if unknown."""
    return _BY_TYPE[error_type]


def error_types() -> tuple[str, ...]:
    """Every variant's type name, in the taxonomy's order."""
    return tuple(_BY_TYPE)
