"""The common call's admission in one locked section: :func:`admit_fast`.

Most calls meet a CLOSED breaker, a rate bucket with tokens and nothing else. For those,
the breaker's gate, the rate limit, the bulkhead, the retry budget's count and the ticket
are decided here inline, with the service's lock taken once and no decision object made.
Any other state — a breaker not CLOSED (or a fleet breaker not known to be in force), a
candidate policy in shadow mode, a slow-call rule, a full bulkhead, an empty bucket, a fleet
limit without units left — answers None *before anything changed*, and the caller takes the
full path (:meth:`Executor.enter_full`), which decides the same call alike.

:func:`take_plain` is that section alone: a caller that needs no ticket while the call
succeeds (the protected channel) makes one with :func:`first_ticket` only when the call
goes any other way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .admission import Refused, Ticket, rate_refused
from .breaker import BreakerState
from .outcomes import kind_of
from .view import ServiceState

if TYPE_CHECKING:
    from .executor import Executor

__all__ = ["admit_fast", "first_ticket", "new_ticket", "seconds_left", "take_plain"]

_CLOSED = BreakerState.CLOSED


def admit_fast(
    ex: Executor,
    state: ServiceState,
    operation: str,
    kind: str | None,
    timeout: float | None,
    deadline: float | None,
    now: float,
) -> Ticket | Refused | None:
    """A ticket for a call's first attempt at ``state`` (no ``cost=``) at ``now``, or None:
    take the full path with the same ``now``. A Refused only for a fleet limit whose
    period ran out between the look and the take (its units were asked for: as the full
    path refuses it)."""
    taken = take_plain(ex, state, now)
    if taken is True:
        return first_ticket(state, operation, kind, timeout, deadline, now)
    if taken is False:
        return None
    return ex.count_refused(state, taken, operation)


def take_plain(ex: Executor, state: ServiceState, now: float) -> bool | Refused:
    """What :func:`admit_fast` takes at ``now``, without a ticket: True when the call is
    admitted (its bulkhead place and rate unit taken, the retry budget's call counted);
    False when it must take the full path, nothing changed; a Refused (not counted yet)
    when a fleet limit's period ran out between the look and the take."""
    fleet = state.fleet
    if fleet is None:
        if state.local.state is not _CLOSED:
            return False
    elif fleet.state is not _CLOSED or not ex.view.connected:
        return False
    if state.shadow is not None:
        return False
    if state.policy.slow_call is not None or state.running:  # attempts to judge: the full path
        return False
    bulkhead = state.bulkhead
    with state.lock:
        if bulkhead.limit and bulkhead.in_flight >= bulkhead.limit:
            return False
        leased = state.leased
        budget = leased.get(state.requests_resource) if leased else None
        if budget is None:
            if state.bucket.take(1.0, now):
                return False  # a take that fails changes nothing the full path finds at ``now``
        elif budget.left < 1.0:
            return False
        else:
            wait = budget.take(1.0, now)
            if wait:  # its period ended with none left in the next: asked for, so refused here
                return rate_refused(state, budget, wait, now)
        bulkhead.in_flight += 1
        state.budget.record_call(now)
    return True


def first_ticket(
    state: ServiceState,
    operation: str,
    kind: str | None,
    timeout: float | None,
    deadline: float | None,
    now: float,
) -> Ticket:
    """The ticket of a first attempt :func:`take_plain` admitted at ``now``."""
    ticket = new_ticket(state, operation, kind, timeout, deadline, now, None)
    ticket.started = now
    return ticket


def seconds_left(state: ServiceState, timeout: float | None, deadline: float | None, now: float) -> float:
    """An attempt's timeout at ``now``: the policy's, cut to the caller's ``timeout`` and to
    what is left before ``deadline``."""
    seconds = state.policy.timeout_secs
    if timeout is not None and timeout < seconds:
        seconds = max(0.0, timeout)
    if deadline is not None and deadline - now < seconds:
        seconds = max(0.0, deadline - now)
    return seconds


def new_ticket(
    state: ServiceState,
    operation: str,
    kind: str | None,
    timeout: float | None,
    deadline: float | None,
    now: float,
    probe: str | None,
) -> Ticket:
    """An admitted attempt's ticket: its timeout is :func:`seconds_left`, and a fleet probe's
    ends by its permit's hold (``FleetProbe.hold_end``: the granter may take the permit as
    free after it, and grant it again beside this call)."""
    hold = getattr(probe, "hold_end", None)
    if hold is not None and (deadline is None or hold < deadline):
        deadline = hold
    seconds = seconds_left(state, timeout, deadline, now)
    if kind is None:
        kind = state.kind or kind_of(state.name)
        state.kind = kind
    return Ticket(state, operation, kind, now + seconds, seconds, probe)
