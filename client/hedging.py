"""Hedged requests for idempotent calls (gRPC A6 hedging, Envoy ``hedge_policy``).

A policy's ``hedging {max_attempts, delay_secs}`` sends the first attempt, then another
one each delay without an answer — or at once when an attempt fails with a retryable
code — up to ``max_attempts`` in all. The delay is ``delay_secs``, or a percentile of
the service's recent successful attempts (:mod:`.hedge_delay`), worked out once a call.
The first good answer wins and the attempts still running are cancelled (they count as
neither: a probe permit comes back; one that cannot be cancelled, on a thread, holds its
bulkhead place until it ends). A call whose deadline passes with attempts in flight
counts one timeout failure. An answer that is not retryable ends the call (A6: it
commits). An attempt refused by admission ends the sending: the next one would meet the
same breaker or limit, so a refused call is one rejection, not ``max_attempts``.

Every hedge is an attempt like any other: it passes admission (breaker, rate limit,
quotas, bulkhead) and takes its units and cost. Each after the first spends a budget;
without budget no more hedges are sent. With a hedge budget (``max_extra_ratio``) a hedge
sent for a slow answer spends only that one — it bounds the extra calls, which is what
hedging adds, and a backend that slows down for everyone then gets at most that share
more, while real retries of the service keep the retry budget — and one sent after a
failure, a retry, spends the retry budget only (the hedge budget bounds the hedges sent
for slowness; a fresh agent's is nearly empty and must not starve its retries). Without
one, every hedge spends the retry budget. A hedge for slowness that its budget refuses
stops only the hedges for slowness: an attempt in flight that then fails is still
retried if the retry budget allows (a slow attempt that fails is retried, whatever the
hedge budget). A hedge
is an attempt, not a call: only the first attempt counts in a budget's base of calls
(else hedges would fund their own budget). All attempts share the first one's deadline,
and none is sent with less than :data:`MIN_HEDGE_LEFT` of it left. Hedged calls are not
retried one by one (A6: hedging replaces retries).

:class:`HedgeRun` decides; :func:`run_hedged` (threads or gRPC futures) and
:func:`run_hedged_async` (asyncio tasks) carry the decisions out.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .admission import Refused, Ticket
from .errors import OperationTimeout
from .outcomes import NO_RETRY, Counts, Failure, Outcomes
from .policy import Hedging

if TYPE_CHECKING:
    from .executor import Executor

__all__ = ["MIN_HEDGE_LEFT", "HedgeRun", "run_hedged", "run_hedged_async"]

#: No hedge is sent with less than this left before the call's deadline (seconds).
MIN_HEDGE_LEFT = 0.01


class HedgeRun:
    """The decisions of one hedged call; the loops call its events."""

    def __init__(
        self, ex: Executor, service: str, operation: str, kind: str | None, timeout: float | None,
        cost: Mapping[str, float] | None, outcomes: Outcomes | None, deadline: float | None,
        hedging: Hedging,
    ) -> None:  # fmt: skip
        self.ex = ex
        self.service = service
        self.operation = operation
        self.kind = kind
        self.timeout = timeout
        self.cost = cost
        self.outcomes = outcomes
        self.deadline = deadline  # the first attempt's, once admitted
        self.hedging = hedging
        self.meter = ex.hedge_meter(service)
        self.delay = self.meter.delay(hedging)
        self.after_failure = False  # the next attempt would be a retry
        self.sent = 0
        self.first_started: float | None = None  # the first attempt's start, once admitted
        self.next_at = ex.clock()
        self.error: BaseException | None = None  # the latest failure or refusal
        self.over = False  # nothing more will be sent
        self.slow_refused = False  # the budget refused a hedge for slowness: none more
        self.expired_once = False  # the call's timeout is counted

    def due(self, now: float) -> Ticket | None:
        """The next attempt, admitted, if one is due now; refusals are taken in turn."""
        while now >= self.next_at and self._sending():
            if self.sent and self.deadline is not None and now >= self.deadline - MIN_HEDGE_LEFT:
                self.over = True  # a hedge this late could not answer in time
                break
            if self.sent and not self._budget_allows():
                if self.after_failure:
                    self.over = True  # the retry budget says no more
                else:
                    # No hedge for slowness, but the attempt in flight may still fail,
                    # and its retry is the retry budget's to allow, not this one's.
                    self.slow_refused = True
                break
            self.sent += 1
            ticket = self.ex.enter(
                self.service,
                self.operation,
                self.kind,
                self.timeout,
                self.cost,
                self.deadline,
                call=self.sent == 1,
            )
            if type(ticket) is Refused:
                # Another attempt now would meet the same breaker or limit: the refusal is
                # counted once and ends the sending (attempts in flight may still answer).
                self.error = ticket.error
                self.over = True
                break
            assert isinstance(ticket, Ticket)
            if self.sent == 1:
                self.meter.called(self.hedging)
                self.first_started = ticket.started
            self.after_failure = False
            if self.deadline is None or ticket.deadline < self.deadline:
                self.deadline = ticket.deadline
            self.next_at = now + self.delay
            return ticket
        if self.sent >= self.hedging.max_attempts:
            self.over = True
        return None

    def _sending(self) -> bool:
        """Another attempt may still go (when it is due)."""
        if self.over or self.sent >= self.hedging.max_attempts:
            return False
        return self.after_failure or not self.slow_refused

    def _budget_allows(self) -> bool:
        """One more attempt's budget: a retry (after a failure) spends the retry budget
        only; a hedge for a slow answer spends the hedge budget, or without one the
        retry budget."""
        if self.after_failure or not self.hedging.max_extra_ratio:
            return self.ex.spend_budget(self.service)
        return self.meter.spend(self.hedging)

    def wait(self, now: float) -> float:
        """Seconds until the next attempt is due or the deadline passes."""
        until = self.deadline if self.deadline is not None else now
        if self._sending():
            until = min(until, self.next_at)
        return max(0.0, until - now)

    def timed_out(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def succeeded(self, ticket: Ticket) -> None:
        now = self.ex.clock()
        self.meter.succeeded(now - ticket.started)
        if self.first_started is not None and ticket.started > self.first_started:
            # A hedge won: the first attempt, still running, took at least this long. Not
            # recording it would leave the slow answers that caused hedges out of the
            # latencies, and the adaptive delay would drift down, hedging ever more calls.
            self.meter.succeeded(now - self.first_started)
        self.ex.release(ticket)
        self.ex.record(ticket, None)

    def failed(self, ticket: Ticket, exc: BaseException) -> bool:
        """Count a failed attempt; True when it ends the call (its answer is final)."""
        ex = self.ex
        ex.release(ticket)
        failure = ex.classify(ticket, exc, self.outcomes)
        ex.record(ticket, failure)
        self.error = ex.with_context(failure.error, self.service, self.operation)
        if not _retryable(ticket, failure):
            self.over = True
            return True
        self.next_at = ex.clock()  # the next hedge at once
        self.after_failure = True
        return False

    def cancelled(self, ticket: Ticket) -> None:
        """A loser, cancelled: it counts as neither."""
        self.ex.release(ticket)
        self.ex.abandon(ticket)

    def let_go(self, ticket: Ticket, expired: bool) -> None:
        """An attempt still running when the call ended: a loser counts as neither (a probe
        permit comes back); the first one in flight at the deadline counts the call's
        timeout, one failure as an unhedged call's would."""
        if not expired or self.expired_once:
            self.ex.abandon(ticket)
            return
        self.expired_once = True
        timeout = OperationTimeout(ticket.operation, ticket.timeout)
        self.ex.record(ticket, Failure(timeout, Counts.FAILURE, ran=True))

    def expired(self, ticket: Ticket) -> None:
        """An attempt that ended after the deadline: the call's timeout."""
        self.ex.release(ticket)
        self.let_go(ticket, True)

    def finished(self, in_flight: int) -> bool:
        """Nothing runs and nothing more will be sent."""
        return in_flight == 0 and not self._sending()

    def give_up(self) -> BaseException:
        if self.error is None:
            self.error = OperationTimeout(self.operation, self.timeout or 0.0)
        return self.ex.with_context(self.error, self.service, self.operation)


def _retryable(ticket: Ticket, failure: Failure) -> bool:
    if failure.counts is not Counts.FAILURE or failure.code is None or failure.retry_after == NO_RETRY:
        return False
    return failure.code.name in ticket.state.policy.retryable_codes


def run_hedged(
    hedge: HedgeRun,
    start: Callable[[float], Any],
    result: Callable[[Any], Any],
) -> Any:
    """The sync loop: ``start(seconds_left)`` sends an attempt and returns a future (a
    gRPC call, or a thread pool's future); ``result(future)`` is what the caller gets."""
    ended: queue.SimpleQueue[Any] = queue.SimpleQueue()
    flights: dict[Any, Ticket] = {}
    ex = hedge.ex
    expired = False
    try:
        while True:
            now = ex.clock()
            while (ticket := hedge.due(now)) is not None:
                try:
                    future = start(ticket.deadline - now)
                except Exception as exc:
                    if hedge.failed(ticket, exc):
                        raise hedge.give_up() from None
                    continue
                flights[future] = ticket
                future.add_done_callback(ended.put)
            if hedge.finished(len(flights)):
                raise hedge.give_up()
            if hedge.timed_out(now):
                expired = True
                raise hedge.give_up()
            try:
                future = ended.get(timeout=hedge.wait(now))
            except queue.Empty:
                continue
            ticket = flights.pop(future)
            if future.cancelled():
                hedge.cancelled(ticket)
                continue
            error = future.exception()
            if error is None:
                hedge.succeeded(ticket)
                return result(future)
            if hedge.timed_out(ex.clock()):  # its own deadline: the call's timeout
                hedge.expired(ticket)
                continue
            if hedge.failed(ticket, error):
                raise hedge.give_up()
    finally:
        for future, ticket in flights.items():
            _let_go(hedge, future, ticket, expired)


def _let_go(hedge: HedgeRun, future: Any, ticket: Ticket, expired: bool) -> None:
    """An attempt still running when the call ended: counted at once (:meth:`HedgeRun.let_go`)
    and cancelled if it can be, else its place is held until it ends (an attempt on a
    thread runs to its end)."""
    hedge.let_go(ticket, expired)
    if future.cancel():
        hedge.ex.release(ticket)
    else:
        future.add_done_callback(lambda _done: hedge.ex.release(ticket))


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.cancelled() or task.exception() is not None


async def run_hedged_async(hedge: HedgeRun, attempt: Callable[[float], Awaitable[Any]]) -> Any:
    """The asyncio loop: each attempt a task, bounded by the deadline; losers cancelled."""
    flights: dict[asyncio.Task[Any], Ticket] = {}
    ex = hedge.ex
    expired = False

    async def bounded(left: float) -> Any:
        async with asyncio.timeout(left):
            return await attempt(left)

    try:
        while True:
            now = ex.clock()
            while (ticket := hedge.due(now)) is not None:
                flights[asyncio.ensure_future(bounded(ticket.deadline - now))] = ticket
            if hedge.finished(len(flights)):
                raise hedge.give_up()
            if hedge.timed_out(now):
                expired = True
                raise hedge.give_up()
            done, _ = await asyncio.wait(
                flights, timeout=hedge.wait(now), return_when=asyncio.FIRST_COMPLETED
            )
            for task in sorted(done, key=_failed):  # a success of the same turn wins
                ticket = flights.pop(task)
                exc = task.exception()
                if exc is None:
                    hedge.succeeded(ticket)
                    return task.result()
                if hedge.timed_out(ex.clock()):  # its own deadline: the call's timeout
                    hedge.expired(ticket)
                    continue
                if hedge.failed(ticket, exc):
                    raise hedge.give_up()
    finally:
        for task, ticket in flights.items():
            task.cancel()
            hedge.ex.release(ticket)
            hedge.let_go(ticket, expired)
