"""The deadline of the protected call running in this context, and how it passes on.

A protected attempt (guard, interceptor) and a servicer behind our server interceptors set
it; every protected call made inside gets at most the time left, as gRPC Go and Java pass
a context's deadline to the calls made under it.
"""

from __future__ import annotations

import contextvars
import time

__all__ = ["current_deadline", "inherit_deadline", "restore_deadline"]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mission_control_deadline", default=None
)


def current_deadline() -> float | None:
    """Seconds left for the protected call running in this context (pass it to your I/O);
    None outside one. Calls made inside get at most this much time."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def inherit_deadline(seconds_left: float | None) -> contextvars.Token[float | None] | None:
    """Calls made from here on in this context get at most ``seconds_left`` (a servicer
    passing its caller's time on); None leaves the deadline as it is. Undo with
    :func:`restore_deadline`."""
    if seconds_left is None:
        return None
    return _deadline.set(time.monotonic() + max(0.0, seconds_left))


def restore_deadline(token: contextvars.Token[float | None] | None) -> None:
    if token is not None:
        _deadline.reset(token)
