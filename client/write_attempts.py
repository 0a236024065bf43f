"""Whether a failed write may have reached its upstream: a write spool keeps only writes
that surely did not (else a replay could make a write the upstream already applied).

The guard wraps each attempt of a spool-backed write in :func:`attempt_of_write`; an
attempt counts as *not applied* only when it failed with an error that says the request was
never taken: the connection was refused, or gRPC ``UNAVAILABLE`` (no connection to send it
on). A timeout, an attempt that returned after its deadline, or any other error may have
been applied.
"""

from __future__ import annotations

import contextvars
import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from .errors import CircuitBreakerOpen, ResourceExhausted

__all__ = ["WriteAttempts", "attempt_of_write", "tracking", "was_not_applied"]

_NOT_SENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


@dataclass(slots=True)
class WriteAttempts:
    """The attempts of one write: how many reached the protected function, and how many of
    them surely did not reach the upstream."""

    made: int = 0
    not_applied: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def maybe_applied(self) -> bool:
        """Some attempt may have been applied by the upstream."""
        with self._lock:
            return self.made > self.not_applied

    def started(self) -> None:
        with self._lock:
            self.made += 1

    def refused(self) -> None:
        with self._lock:
            self.not_applied += 1


_current: contextvars.ContextVar[WriteAttempts | None] = contextvars.ContextVar(
    "mission_control_write_attempts", default=None
)


@contextmanager
def tracking(attempts: WriteAttempts) -> Iterator[WriteAttempts]:
    """The attempts made inside the block (on any thread of a copy of this context)."""
    token = _current.set(attempts)
    try:
        yield attempts
    finally:
        _current.reset(token)


@contextmanager
def attempt_of_write() -> Iterator[None]:
    """Around one attempt of a write: counted in the write's :class:`WriteAttempts`."""
    attempts = _current.get()
    if attempts is None:
        yield
        return
    attempts.started()
    try:
        yield
    except BaseException as exc:
        if was_not_applied(exc):
            attempts.refused()
        raise


def was_not_applied(exc: BaseException) -> bool:
    """The error says the request never reached the upstream."""
    if isinstance(exc, CircuitBreakerOpen | ResourceExhausted | ConnectionRefusedError | socket.gaierror):
        return True
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return exc.code() is grpc.StatusCode.UNAVAILABLE
    return isinstance(exc, OSError) and exc.errno in _NOT_SENT_ERRNOS
