"""What an attempt's outcome counts as: the one place that decides it.

An attempt ends in one of three ways for the service's breaker and the fleet's counts:

* **success** — the service answered (a result, or a gRPC status that is the service's
  answer, such as ``NOT_FOUND`` or ``INVALID_ARGUMENT``);
* **failure** — the service failed: a gRPC status in :data:`FAILURE_CODES`, a taxonomy error
  that says so, a timeout, or a connection error (refused, reset, unreachable);
* **neither** — the caller's own error (``ValueError``, ``FileNotFoundError``, …): the
  service was perhaps not even reached, so it moves nothing and a probe permit comes back
  unused. The error passes through unchanged.

:class:`Outcomes` changes the verdict per service or per call, in the manner of
resilience4j's ``recordExceptions`` / ``ignoreExceptions``, or with a ``classify``
callable. Telemetry reports as failed calls exactly those these rules count as failures.
"""

from __future__ import annotations

import enum
import errno
import logging
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from .errors import (
    LLMProviderUnavailable,
    MissionControlError,
    OperationTimeout,
    StorageFailure,
)
from .status import remote_status_of

__all__ = [
    "FAILURE_CODES",
    "Counts",
    "Failure",
    "Outcomes",
    "ServiceKind",
    "classify",
    "kind_of",
    "named_verdict",
    "pushback",
]

_log = logging.getLogger("mission_control.client")

#: Codes that say the *service* failed (they move the breaker); any other code is the
#: service answering (e.g. INVALID_ARGUMENT is the caller's problem, not an outage).
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
    }
)

#: ``OSError`` numbers that mean the other side cannot be reached.
_UNREACHABLE = frozenset(
    getattr(errno, name)
    for name in ("ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH",
                 "EHOSTDOWN", "ENETDOWN", "ETIMEDOUT", "EPIPE", "ENOTCONN")
    if hasattr(errno, name)
)  # fmt: skip

#: ``grpc-retry-pushback-ms`` that says "do not retry" (gRPC A6: negative or not a number).
NO_RETRY = math.inf


class Counts(enum.Enum):
    """What an outcome counts as for the breaker and the fleet."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEITHER = "neither"


class ServiceKind:
    """What a service is, to name its failures: an LLM provider, storage, or other."""

    LLM = "llm"
    STORAGE = "storage"
    OTHER = "other"


_STORAGE_HINTS = ("storage", "duckdb", "db", "sql", "r2", "s3", "blob", "bucket", "object")


def kind_of(service: str) -> str:
    """A service's kind guessed from its name (``llm_provider`` -> llm, ``storage_backend``
    -> storage); pass ``kind=`` explicitly where the name says nothing."""
    name = service.lower()
    if "llm" in name or "model" in name:
        return ServiceKind.LLM
    if any(hint in name for hint in _STORAGE_HINTS):
        return ServiceKind.STORAGE
    return ServiceKind.OTHER


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that raised: the error the caller gets, what it counts as, its gRPC code
    and the wait it asked for (``NO_RETRY`` = do not retry). ``ran`` = the call certainly
    executed (it returned, but too late)."""

    error: BaseException
    counts: Counts
    code: grpc.StatusCode | None = None
    retry_after: float | None = None
    ran: bool = False


@dataclass(frozen=True, slots=True)
class Outcomes:
    """How a service's (or one guard's) exceptions count.

    Args:
        record: exception types that count as failures of the service.
        ignore: exception types that count as neither (the caller's own), passed unchanged.
        classify: ``exc -> "failure" | "success" | "neither" | None``; None = the rules
            above. Checked first.
        base: the wider scope's outcomes (a guard's over its service's), asked only when
            this one has no verdict: the narrower scope wins.

    Within one scope the most specific class listed wins (``record=(FileNotFoundError,)``
    over ``ignore=(OSError,)``); the same class in both lists is ignored.
    """

    record: tuple[type[BaseException], ...] = ()
    ignore: tuple[type[BaseException], ...] = ()
    classify: Callable[[BaseException], str | None] | None = None
    base: Outcomes | None = None

    def verdict(self, exc: BaseException) -> Counts | None:
        """The caller's verdict on ``exc``, when it has one."""
        if self.classify is not None:
            try:
                said = self.classify(exc)
                if said is not None:
                    return Counts(said)
            except Exception:  # a hook that fails or answers nonsense decides nothing to count
                _log.exception("classify hook failed on %s: counted as neither", type(exc).__name__)
                return Counts.NEITHER
        if self.record or self.ignore:
            for cls in type(exc).__mro__:  # the most specific class first
                if cls in self.ignore:
                    return Counts.NEITHER
                if cls in self.record:
                    return Counts.FAILURE
            # a listed class that is not in the MRO (an ABC such as a virtual subclass)
            if self.ignore and isinstance(exc, self.ignore):
                return Counts.NEITHER
            if self.record and isinstance(exc, self.record):
                return Counts.FAILURE
        return None if self.base is None else self.base.verdict(exc)


DEFAULT = Outcomes()


class Target(Protocol):
    """What classification needs to know about the call: names for the errors."""

    service: str
    operation: str
    kind: str
    timeout: float


def named_verdict(exc: BaseException, record: tuple[str, ...], ignore: tuple[str, ...]) -> Counts | None:
    """A policy's verdict: ``ignore`` / ``record`` name the exception's class or a base
    class, as ``Name`` or ``module.Name`` (nothing is imported to check)."""
    if not (record or ignore):
        return None
    for cls in type(exc).__mro__:  # the most specific class first; ignore wins a tie
        names = (cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}")
        if any(name in ignore for name in names):
            return Counts.NEITHER
        if any(name in record for name in names):
            return Counts.FAILURE
    return None


def classify(
    target: Target,
    exc: BaseException,
    outcomes: Outcomes = DEFAULT,
    policy_lists: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
) -> Failure:
    """The error the caller gets for ``exc`` and what it counts as: ``outcomes`` decides
    first, then the policy's ``(record_errors, ignore_errors)``, then the rules above.
    Taxonomy errors and gRPC errors carrying them pass through intact; connection errors
    to an LLM provider or storage become :class:`LLMProviderUnavailable` /
    :class:`StorageFailure`."""
    failure = _classify(target, exc)
    verdict = outcomes.verdict(exc)
    if verdict is None:
        verdict = named_verdict(exc, *policy_lists)
    if verdict is None or verdict is failure.counts:
        return failure
    if verdict is Counts.FAILURE:
        return Failure(failure.error, verdict, failure.code or grpc.StatusCode.UNKNOWN, failure.retry_after)
    return Failure(exc, verdict, failure.code, NO_RETRY)  # the caller's own: unchanged


def _classify(target: Target, exc: BaseException) -> Failure:
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return _classify_rpc(target, exc)
    if isinstance(exc, MissionControlError):
        counts = Counts.FAILURE if exc.grpc_code in FAILURE_CODES else Counts.NEITHER
        return Failure(exc, counts, exc.grpc_code, exc.retry_after)
    if isinstance(exc, TimeoutError):
        return _caused(
            OperationTimeout(target.operation, target.timeout), exc, grpc.StatusCode.DEADLINE_EXCEEDED
        )
    if _unreachable(exc):
        error = _unavailable(target, f"{type(exc).__name__}: {exc}")
        if error is None:
            return Failure(exc, Counts.FAILURE, grpc.StatusCode.UNAVAILABLE)
        return _caused(error, exc, grpc.StatusCode.UNAVAILABLE)
    return Failure(exc, Counts.NEITHER)


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | socket.gaierror | socket.herror):
        return True
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE


def _caused(error: MissionControlError, cause: BaseException, code: grpc.StatusCode) -> Failure:
    error.__cause__ = cause
    return Failure(error, Counts.FAILURE, code)


def _classify_rpc(target: Target, exc: grpc.RpcError) -> Failure:
    remote = remote_status_of(exc)
    code = remote.code
    # gRPC A6: a pushback that is not a wait means do not retry, whatever else is present.
    pushed = pushback(exc)
    retry_after = remote.retry_after
    if retry_after is None or pushed == NO_RETRY:
        retry_after = pushed
    counts = Counts.FAILURE if code in FAILURE_CODES else Counts.SUCCESS
    if remote.error is not None:
        remote.error.__cause__ = exc
        return Failure(remote.error, counts, code, retry_after)
    error: MissionControlError | None = None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        error = OperationTimeout(target.operation, target.timeout)
    elif code is grpc.StatusCode.UNAVAILABLE:
        error = _unavailable(target, remote.message or code.name)
    if error is None:
        return Failure(exc, counts, code, retry_after)
    error.__cause__ = exc
    return Failure(error, counts, code, retry_after)


def _unavailable(target: Target, details: str) -> MissionControlError | None:
    if target.kind == ServiceKind.LLM:
        return LLMProviderUnavailable(target.service, details)
    if target.kind == ServiceKind.STORAGE:
        return StorageFailure(target.service, target.operation, details)
    return None


def pushback(exc: Any) -> float | None:
    """The wait ``grpc-retry-pushback-ms`` asks for, in seconds; :data:`NO_RETRY` when it is
    negative or not a number (gRPC A6: the server says do not retry); None when absent."""
    try:
        metadata: Any = exc.trailing_metadata() or ()
    except Exception:  # a call object without metadata tells nothing: no wait asked
        return None
    for key, value in metadata:
        if key == "grpc-retry-pushback-ms":
            try:
                ms = int(value)
            except (TypeError, ValueError):
                return NO_RETRY
            return ms / 1000.0 if ms >= 0 else NO_RETRY
    return None
