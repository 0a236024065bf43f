"""One logical call as a plan of steps: attempt, retry, fall back — without any I/O.

:class:`CallPlan` answers each event with the next step: :class:`Attempt` (call the
function of ``target`` with ``left`` seconds), :class:`Sleep` or :class:`Done`. The sync
and asyncio loops in :mod:`.executor` only carry the steps out, so both behave alike.

Rules, per target (the service, then each fallback in the policy's order):

* every attempt passes admission — the breaker, the rate limit and the quota costs — so a
  retry or a fallback spends its own unit and cost; a retry that cannot have them waits,
  within the deadline, or gives up with ``ResourceExhausted``;
* only failures of the service are retried (policy codes, a wait asked by ``RetryInfo`` or
  ``grpc-retry-pushback-ms``, never a "do not retry", never past the deadline, within the
  retry budget), with tenacity's stop and wait objects;
* a call that ran (it returned after its deadline) or may have (it timed out in flight) is
  neither retried nor sent to a fallback unless the caller says it is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
from tenacity import Future as TenacityFuture
from tenacity import RetryCallState

from . import half_open_hold
from .admission import Refused, Ticket, known_resources
from .breaker import BreakerState
from .errors import CircuitBreakerOpen, LLMProviderUnavailable, OperationTimeout, ResourceExhausted
from .outcomes import NO_RETRY, Counts, Failure, Outcomes
from .retry import policy_stop, policy_wait

if TYPE_CHECKING:
    from .executor import Executor
    from .policy import ServicePolicy
    from .view import ServiceState

__all__ = ["Attempt", "CallPlan", "Done", "Sleep"]


class Attempt:
    """Call ``target``'s function with ``left`` seconds (until ``deadline``)."""

    __slots__ = ("deadline", "left", "target")

    def __init__(self, target: str, left: float, deadline: float) -> None:
        self.target = target
        self.left = left
        self.deadline = deadline


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Done:
    """The call is over: ``result``, or ``error`` to raise."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error


Step = Attempt | Sleep | Done


class _Asked(Exception):
    """A failure as tenacity's wait sees it: the wait it asked for."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__()
        self.retry_after = retry_after


class CallPlan:
    """The steps of one logical call; see the module's rules."""

    # What only a failing call needs starts as these class-level defaults, so that the
    # common call (one attempt that succeeds) sets up little.
    ticket: Ticket | None = None
    _retry: RetryCallState | None = None
    _queue: list[str] | None = None  # fallbacks still to try, once the service failed
    _error: BaseException | None = None  # what the service failed with
    _failure: Failure | None = None
    _last: Failure | None = None  # the failure a retry is waiting to follow
    _attempted = False  # a retry or a fallback was tried
    _tried = 0  # fallbacks tried
    _held_until: float | None = None  # the first attempt waits for a HALF_OPEN until then
    _held_from: float | None = None  # ... from then (None: it did not wait)

    def __init__(
        self,
        ex: Executor,
        service: str,
        operation: str,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
        fallbacks: tuple[str, ...],
        idempotent: bool,
        outcomes: Outcomes | None,
        parent_deadline: float | None,
    ) -> None:
        self.ex = ex
        self.service = service
        self.operation = operation
        self.kind = kind
        self.timeout = timeout
        self.cost = cost
        self.fallbacks = fallbacks
        self.idempotent = idempotent
        self.outcomes = outcomes
        self.parent_deadline = parent_deadline
        self._current = service
        self._cost = cost

    # -- events ------------------------------------------------------------------

    def start(self) -> Step:
        return self._enter(self.service)

    def begin(self, admitted: Ticket | Refused) -> Step:
        """:meth:`start` with the service's admission already decided (``Executor.enter``
        with this plan's arguments), by a caller that tried its fast path first."""
        if type(admitted) is Refused:
            held = self._hold(self.service) if admitted.reason == "breaker" else None
            return held or self._target_failed(admitted.error, None)
        self.ticket = admitted  # type: ignore[assignment]
        return self._attempt(admitted)  # type: ignore[arg-type]

    def adopt(self, ticket: Ticket) -> None:
        """Take over the service's first attempt, admitted and made by the caller: what it
        ended with goes to :meth:`succeeded` or :meth:`failed` next."""
        self.ticket = ticket

    def succeeded(self, result: Any) -> Step:
        ticket = self.ticket
        assert ticket is not None
        ex = self.ex
        if ex.clock() > ticket.deadline:  # a sync call cannot be interrupted: late is a timeout
            return self._failed(self._late(ticket))
        self.ticket = None
        ex.succeeded(ticket)
        if self._queue is not None:
            ex.fell_back(ex.view.get(self.service), ticket.service, True)
        elif self._attempted:
            ex.recovered(ex.view.get(self.service), True)
        return Done(result)

    def failed(self, exc: BaseException) -> Step:
        ticket = self.ticket
        assert ticket is not None
        failure = self.ex.classify(ticket, exc, self.outcomes)
        self.ex.record(ticket, failure, self._shadow_would(ticket, failure))
        return self._failed(failure)

    def slept(self) -> Step:
        """After a retry's backoff, or a wait for a limit or a HALF_OPEN: admit the next attempt."""
        ticket = self.ticket
        if ticket is None:  # the first attempt waited for a HALF_OPEN to end
            return self._enter(self.service)
        now = self.ex.clock()
        refused = self.ex.readmit(ticket, self._cost, now)
        if refused is None:
            return self._attempt(ticket)
        if refused.reason == "breaker":  # the breaker opened meanwhile: the last failure stands
            last = self._last
            assert last is not None
            last.error.add_note(f"not retried: {refused.error}")
            return self._target_failed(last.error, last)
        if refused.wait is not None and now + refused.wait < ticket.deadline:
            return Sleep(refused.wait)
        return self._target_failed(refused.error, None)

    def close(self) -> None:
        """The loop is over however it ended: free what is still held."""
        if self.ticket is not None:
            self.ex.abandon(self.ticket)
            self._release()

    # -- decisions ---------------------------------------------------------------

    def _enter(self, service: str) -> Step:
        primary = self._queue is None
        self._current = service
        timeout = self.timeout
        if primary:
            held = self._hold(service)
            if held is not None:
                return held
            if self._held_from is not None:  # its hold is over; the time held counts against its own
                self.ex.holds.end(self)
                timeout = self._timeout_of(self.ex.view.get(service)) - (self.ex.clock() - self._held_from)
                timeout = max(timeout, 1e-3)
        self._cost = self.cost if primary else self._cost_for(service)
        kind = self.kind if primary else None
        ticket = self.ex.enter(service, self.operation, kind, timeout, self._cost, self.parent_deadline)
        if type(ticket) is Refused:
            return self._target_failed(ticket.error, None)
        self.ticket = ticket  # type: ignore[assignment]
        if not primary:
            self._retry = None  # a fallback's retries are its own
        return self._attempt(ticket)  # type: ignore[arg-type]

    def _hold(self, service: str) -> Sleep | None:
        """A wait for the service's HALF_OPEN to end, when the first attempt would be
        refused only for want of a probe permit (:mod:`.half_open_hold`); None to go on."""
        ex = self.ex
        state = ex.view.get(service)
        if state.fleet is None or state.fleet.state is not BreakerState.HALF_OPEN:
            return None  # the common case: one attribute read
        now = ex.clock()
        if not half_open_hold.waits(ex.view, state, now):
            return None
        if self._held_until is None:
            self._held_until = half_open_hold.hold_until(self._timeout_of(state), self.parent_deadline, now)
            if not ex.holds.begin(self, self._held_until, now):
                self._held_until = now  # enough calls hold already: refused as before
                return None
            self._held_from = now
        if now >= self._held_until:
            return None  # waited long enough: refused as before
        ex.admission.ask_probe(state)
        return Sleep(min(half_open_hold.LOOK_SECS, self._held_until - now))

    def _timeout_of(self, state: ServiceState) -> float:
        return state.policy.timeout_secs if self.timeout is None else self.timeout

    def _attempt(self, ticket: Ticket) -> Step:
        left = ticket.deadline - self.ex.clock()
        if left <= 0:
            return self._no_time(ticket)
        return Attempt(ticket.service, left, ticket.deadline)

    def _no_time(self, ticket: Ticket) -> Step:
        """The deadline passed before this attempt could be made (the caller's time was up
        already, or a retry's or a fallback's): it is not made, counts as nothing (a probe
        permit comes back) and nothing more is tried."""
        ex = self.ex
        ex.abandon(ticket)
        self._release()
        failure = self._last if self._error is None else self._failure
        if self._error is not None:  # a fallback without time: the service's error stands
            error = self._error
        elif failure is not None:  # a retry without time: the last failure stands
            error = ex.with_context(failure.error, self.service, self.operation)
        else:
            expired = OperationTimeout(ticket.operation, ticket.timeout)
            error = ex.with_context(expired, self.service, self.operation)
            failure = Failure(error, Counts.NEITHER)
        ex.given_up(ex.view.get(self.service), self.operation, error, failure, self._attempted)
        return Done(error=error)

    def _late(self, ticket: Ticket) -> Failure:
        failure = Failure(OperationTimeout(ticket.operation, ticket.timeout), Counts.FAILURE, ran=True)
        self.ex.record(ticket, failure, self._shadow_would(ticket, failure))
        return failure

    def _failed(self, failure: Failure) -> Step:
        ticket = self.ticket
        assert ticket is not None
        delay = self._backoff(ticket, failure) if self._retryable(ticket.state.policy, failure) else None
        if ticket.state.shadow is not None and delay is not None:
            self.ex.shadow_retried(ticket.state)
        if delay is not None:
            self._last = failure
            return Sleep(delay)
        return self._target_failed(failure.error, failure)

    def _shadow_would(self, ticket: Ticket, failure: Failure) -> bool:
        """Whether a candidate policy in shadow mode would retry ``failure`` (counted with
        the failure itself, in one report: the control plane bounds one by the other)."""
        shadow = ticket.state.shadow
        if shadow is None:
            return False
        attempts = 1 if self._retry is None else self._retry.attempt_number
        return self._retryable(shadow.policy, failure) and attempts <= shadow.policy.max_retries

    def _retryable(self, policy: ServicePolicy, failure: Failure) -> bool:
        """Whether ``policy``'s rules retry ``failure`` at all (its stop decides when not)."""
        if failure.counts is not Counts.FAILURE or failure.code is None:
            return False
        if _may_have_run(failure) and not (self.idempotent or policy.idempotent):
            return False
        error = failure.error
        if isinstance(error, CircuitBreakerOpen) or failure.retry_after == NO_RETRY:
            return False
        if policy.max_retries == 0 or failure.code.name not in policy.retryable_codes:
            return False
        # A quota says when it refills; without that, retrying only burns the budget.
        return not (isinstance(error, ResourceExhausted) and failure.retry_after is None)

    def _backoff(self, ticket: Ticket, failure: Failure) -> float | None:
        """tenacity's wait and stop for the next retry: the delay, or None to stop."""
        now = self.ex.clock()
        retry = self._retry
        policy = ticket.state.policy
        if retry is None:
            retry = self._retry = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
            retry.start_time = now
        outcome = TenacityFuture(retry.attempt_number)
        outcome.set_exception(_Asked(failure.retry_after))
        retry.outcome, retry.outcome_timestamp = outcome, now
        left = ticket.deadline - retry.start_time
        delay = policy_wait(policy.backoff)(retry)
        retry.upcoming_sleep = delay
        if policy_stop(policy.max_retries, left, lambda: self.ex.spend_retry(ticket))(retry):
            return None
        self.ex.retrying(ticket, retry.attempt_number, delay, failure.error)
        retry.attempt_number += 1
        self._attempted = True
        return delay

    def _target_failed(self, error: BaseException, failure: Failure | None) -> Step:
        self._release()
        ex = self.ex
        state = ex.view.get(self.service)
        if self._queue is None:  # the service itself failed
            self._error = ex.with_context(error, self.service, self.operation)
            self._failure = failure
            self._queue = self._fallback_names(failure)
        elif failure is not None and failure.counts is Counts.NEITHER:
            return Done(error=error)  # the caller's own error, raised by a fallback: unchanged
        else:
            assert self._error is not None
            self._error.add_note(f"fallback {self._current!r} failed too: {error}")
            ex.fell_back(state, self._current, False)
        if self._queue:
            self._attempted = True
            self._tried += 1
            return self._enter(self._queue.pop(0))
        tried = self._tried
        if tried and isinstance(self._error, LLMProviderUnavailable):
            self._error.backups_tried = tried
        ex.given_up(state, self.operation, self._error, self._failure, self._attempted)
        return Done(error=self._error)

    def _fallback_names(self, failure: Failure | None) -> list[str]:
        if not self.fallbacks:
            return []
        # failure None: refused by the breaker or a limit, nothing ran
        if failure is not None and not self._may_fall_back(failure):
            return []
        policy = self.ex.view.get(self.service).policy
        # an endpoint's policy is its service's, which may name this very endpoint
        return [name for name in policy.fallbacks if name in self.fallbacks and name != self.service]

    def _cost_for(self, fallback: str) -> Mapping[str, float] | None:
        """The call's cost in the resources the fallback limits (it takes those)."""
        if not self.cost:
            return None
        known = known_resources(self.ex.view.get(fallback))
        return {resource: amount for resource, amount in self.cost.items() if resource in known}

    def _may_fall_back(self, failure: Failure) -> bool:
        idempotent = self.idempotent or self.ex.view.get(self.service).policy.idempotent
        return failure.counts is Counts.FAILURE and (idempotent or not _may_have_run(failure))

    def _release(self) -> None:
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            self.ex.release(ticket)


def _may_have_run(failure: Failure) -> bool:
    """The attempt ran (it returned too late) or may have: it timed out while in flight."""
    return failure.ran or failure.code is grpc.StatusCode.DEADLINE_EXCEEDED
