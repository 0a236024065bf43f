"""The common call's admission in one locked section: :func:`admit_fast`.

Most calls meet a CLOSED breaker, a rate bucket with tokens and nothing else. For those,
the breaker's gate, the rate limit, the bulkhead, the retry budget's count and the ticket
are decided here inline, with the service's lock taken once and no decision object made.
Any other state — a breaker not CLOSED (or a fleet breaker not known to be in force), a
candidate policy in shadow mode, a slow-call rule, a full bulkhead, an empty bucket, a fleet
limit without units left — answers None *before anything changed*, and the caller takes the
full path (:meth:`Executor.enter_full`), which decides the same call alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .admission import Refused, Ticket, rate_refused
from .breaker import BreakerState
from .outcomes import kind_of
from .view import ServiceState

if TYPE_CHECKING:
    from .executor import Executor

__all__ = ["admit_fast", "new_ticket"]

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
    fleet = state.fleet
    if fleet is None:
        if state.local.state is not _CLOSED:
            return None
    elif fleet.state is not _CLOSED or not ex.view.connected:
        return None
    if state.shadow is not None:
        return None
    policy = state.policy
    if policy.slow_call is not None or state.running:  # attempts to judge: the full path
        return None
    bulkhead = state.bulkhead
    refused = None
    with state.lock:
        if bulkhead.limit and bulkhead.in_flight >= bulkhead.limit:
            return None
        leased = state.leased
        budget = leased.get(state.requests_resource) if leased else None
        if budget is None:
            if state.bucket.take(1.0, now):
                return None  # a take that fails changes nothing the full path finds at ``now``
        elif budget.left < 1.0:
            return None
        else:
            wait = budget.take(1.0, now)
            if wait:  # its period ended with none left in the next: asked for, so refused here
                refused = rate_refused(state, budget, wait, now)
        if refused is None:
            bulkhead.in_flight += 1
            state.budget.record_call(now)
    if refused is not None:
        return ex.count_refused(state, refused, operation)
    ticket = new_ticket(state, operation, kind, timeout, deadline, now, None)
    ticket.started = now
    return ticket


def new_ticket(
    state: ServiceState,
    operation: str,
    kind: str | None,
    timeout: float | None,
    deadline: float | None,
    now: float,
    probe: str | None,
) -> Ticket:
    """An admitted attempt's ticket: its timeout is the policy's, cut to the caller's
    ``timeout`` and to what is left before ``deadline``."""
    seconds = state.policy.timeout_secs
    if timeout is not None and timeout < seconds:
        seconds = max(0.0, timeout)
    if deadline is not None and deadline - now < seconds:
        seconds = max(0.0, deadline - now)
    if kind is None:
        kind = state.kind or kind_of(state.name)
        state.kind = kind
    return Ticket(state, operation, kind, now + seconds, seconds, probe)
