"""One executor, two thin loops: the sync and asyncio callers carry out the same plan.

Per logical call: admission (:mod:`.admission`: breaker from the local view, rate limit,
quotas, bulkhead) → deadline (the policy's timeout, the caller's, and the time left to the
call this one is made for) → the call → what it counts as (:mod:`.outcomes`) → retry and
fallback (:mod:`.attempts`) → the outcome recorded for the fleet. Only :meth:`Executor.drive`
and :meth:`Executor.drive_async` call, sleep or await.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .admission import Admission, Refused, Ticket
from .admit_fast import admit_fast, new_ticket
from .attempts import Attempt, CallPlan, Done, Sleep, Step
from .connection import ControlPlaneConnection
from .deadline import _deadline, current_deadline, inherit_deadline, restore_deadline
from .errors import ConfigurationError, ErrorContext, MissionControlError, OperationTimeout
from .half_open_hold import Holds
from .hedge_delay import HedgeMeter
from .hedging import HedgeRun, run_hedged, run_hedged_async
from .outcomes import DEFAULT, Counts, Failure, Outcomes, ServiceKind, classify, kind_of
from .policy import Hedging, endpoint_problem, service_of
from .shadow import ShadowLimits
from .telemetry import Telemetry
from .view import LocalView, ServiceState

__all__ = [
    "Executor",
    "ServiceKind",
    "Ticket",
    "current_deadline",
    "inherit_deadline",
    "kind_of",
    "restore_deadline",
]

T = TypeVar("T")

#: Threads for the hedged attempts of one service's sync functions.
HEDGE_THREADS = 64


def _under_deadline(attempt: Callable[[float], Any], left: float, deadline: float) -> Any:
    _deadline.set(deadline)  # in the attempt's own context copy
    return attempt(left)


def _result(future: Future[Any]) -> Any:
    return future.result()


class Executor:
    """Decides and runs protected calls for one agent.

    Args:
        view: the local view calls are decided from.
        connection: the control-plane stream (None when running without one).
        agent / session_id: reported in errors' context.
        outcomes: per service, how its exceptions count (see :class:`.outcomes.Outcomes`).
    """

    def __init__(
        self,
        view: LocalView,
        connection: ControlPlaneConnection | None = None,
        *,
        agent: str = "",
        session_id: str = "",
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        telemetry: Telemetry | None = None,
        outcomes: Mapping[str, Outcomes] | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.view = view
        self.connection = connection
        self.admission = Admission(view, connection)
        #: The calls waiting for a HALF_OPEN to end now (see :mod:`.half_open_hold`).
        self.holds = Holds()
        self.agent = agent
        self.session_id = session_id
        self.sleep = sleep
        self.async_sleep = async_sleep
        self.clock = view.clock
        self.outcomes = dict(outcomes or {})
        #: Hedged attempts of sync functions: a pool per service, so that one service's
        #: hanging attempts cannot hold the threads another service's calls need.
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()
        #: Each hedged service's recent latencies and hedge budget (services with a policy
        #: that hedges: as many as the config names).
        self._meters: dict[str, HedgeMeter] = {}
        #: Why calls may not go yet (a control plane that was never started), else None.
        self.not_started: str | None = None

    # -- admission ---------------------------------------------------------------

    def target(self, service: str, endpoint: str | None) -> str:
        """The breaker name calls to ``endpoint`` of ``service`` go by: the endpoint's own
        (``service/endpoint``), or the service's past the policy's ``max_endpoints``.

        Raises:
            ConfigurationError: ``endpoint`` is not a valid endpoint name.
        """
        if endpoint is None:
            return service
        problem = endpoint_problem(endpoint)
        if problem is not None:
            raise ConfigurationError.from_violations([("endpoint", problem)])
        return self.view.endpoint(service, endpoint).name

    def enter(
        self,
        service: str,
        operation: str,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
        deadline: float | None = None,
        call: bool = True,
    ) -> Ticket | Refused:
        """Breaker, limits and a bulkhead place for a call's first attempt at ``service``;
        its deadline is the soonest of the policy's, ``timeout`` and ``deadline``. ``call``
        False: an attempt of a call already counted (a hedge), so the retry budget's base
        (calls) does not grow with the attempts it pays for."""
        if self.not_started is not None:
            raise RuntimeError(self.not_started)
        return self.enter_state(self.view.get(service), operation, kind, timeout, cost, deadline, call)

    def enter_state(
        self,
        state: ServiceState,
        operation: str,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
        deadline: float | None = None,
        call: bool = True,
    ) -> Ticket | Refused:
        """:meth:`enter` for a service (or endpoint) whose state the caller holds and whose
        calls may go (:attr:`not_started` is None)."""
        now = self.clock()
        if cost is None and call:
            ticket = admit_fast(self, state, operation, kind, timeout, deadline, now)
            if ticket is not None:
                return ticket
        return self.enter_full(state, operation, kind, timeout, cost, deadline, call, now)

    def enter_full(
        self,
        state: ServiceState,
        operation: str,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
        deadline: float | None,
        call: bool,
        now: float,
    ) -> Ticket | Refused:
        """:meth:`enter_state` at ``now`` without the common call's shortcut
        (:func:`.admit_fast`): every gate, whatever the service's state."""
        decision = self.admission.breaker(state, now)
        if type(decision) is Refused:
            return self._refused(state, decision, operation)
        try:
            with state.lock:  # one short section for every limit; never held across a call
                if state.running:
                    state.judge_slow(now)
                refused = self.admission.limits(state, cost, now, True)
                if refused is None and call:
                    state.budget.record_call(now)
                shadow = state.shadow
                if shadow is not None:
                    shadow = _shadow_admit(state, shadow, cost, now, refused is None)
        except BaseException:  # a cost in a resource the policy does not limit
            self.admission.give_back(state, decision.probe)  # type: ignore[union-attr]
            raise
        if refused is not None:
            self.admission.give_back(state, decision.probe)  # type: ignore[union-attr]
            return self._refused(state, refused, operation)
        ticket = new_ticket(state, operation, kind, timeout, deadline, now, decision.probe)  # type: ignore[union-attr]
        ticket.shadow = shadow
        ticket.started = now  # as _started, inline: this is every call's path
        if state.policy.slow_call is not None:
            with state.lock:
                state.running.add(ticket)
        return ticket

    def readmit(self, ticket: Ticket, cost: Mapping[str, float] | None, now: float) -> Refused | None:
        """The breaker and limits again, for a retry (its bulkhead place is still held)."""
        state = ticket.state
        decision = self.admission.breaker(state, now)
        if isinstance(decision, Refused):
            self._refused(state, decision, ticket.operation)
            return decision
        try:
            with state.lock:
                refused = self.admission.limits(state, cost, now, bulkhead=False)
        except BaseException:
            self.admission.give_back(state, decision.probe)
            raise
        if refused is not None:
            self.admission.give_back(state, decision.probe)
            self._refused(state, refused, ticket.operation)
            return refused
        ticket.probe = decision.probe
        hold = getattr(decision.probe, "hold_end", None)
        if hold is not None and hold < ticket.deadline:  # a probe ends by its permit's hold
            ticket.deadline = hold
        self._started(ticket, now)
        return None

    @staticmethod
    def _started(ticket: Ticket, now: float) -> None:
        ticket.started, ticket.slow = now, False
        state = ticket.state
        if state.policy.slow_call is not None:
            with state.lock:
                state.running.add(ticket)

    def admit(
        self,
        service: str,
        operation: str,
        *,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
    ) -> Ticket:
        """:meth:`enter` for one attempt, within the current context's deadline; raises the
        refusal (``CircuitBreakerOpen`` or ``ResourceExhausted``)."""
        admitted = self.enter(service, operation, kind, timeout, cost, _deadline.get())
        if isinstance(admitted, Refused):
            raise admitted.error
        if admitted.deadline <= self.clock():  # no time left: never made, counts as nothing
            self.release(admitted)
            self.abandon(admitted)
            raise self.with_context(OperationTimeout(operation, admitted.timeout), service, operation)
        return admitted

    def _refused(self, state: ServiceState, refused: Refused, operation: str) -> Refused:
        """Count ``refused`` for ``state`` and give its error its context."""
        with state.lock:
            state.tally.rejected += 1
            state.tally.rejected_by_reason[refused.reason] += 1
        refused.error.context = self._context(state.name, operation)
        if self.telemetry is not None:
            self.telemetry.call_rejected(refused.error, state.name, operation, refused.reason)
        return refused

    count_refused = _refused

    @staticmethod
    def release(ticket: Ticket) -> None:
        """The target is done with: its bulkhead place is free again."""
        state = ticket.state
        with state.lock:
            state.bulkhead.leave()
            if ticket.shadow is not None:
                ticket.shadow.leave()
                ticket.shadow = None

    def abandon(self, ticket: Ticket) -> None:
        """An attempt ended without an outcome (cancelled, interrupted): its probe comes back."""
        probe, ticket.probe = ticket.probe, None
        with ticket.state.lock:
            ticket.state.running.discard(ticket)
        self.admission.give_back(ticket.state, probe)

    @staticmethod
    def shadow_retried(state: ServiceState) -> None:
        """A failed attempt of a service with a candidate policy in shadow mode was retried
        under the enforced policy (counted beside what the candidate would retry)."""
        with state.lock:
            state.tally.retries += 1

    def spend_budget(self, service: str) -> bool:
        """One retry (or hedge) from ``service``'s retry budget, if it has one left."""
        state = self.view.get(service)
        with state.lock:
            return state.budget.try_retry(self.clock())

    def spend_retry(self, ticket: Ticket) -> bool:
        state = ticket.state
        with state.lock:
            return state.budget.try_retry(self.clock())

    # -- outcomes ----------------------------------------------------------------

    def classify(self, ticket: Ticket, exc: BaseException, outcomes: Outcomes | None = None) -> Failure:
        """What ``exc`` from an attempt counts as, and the error the caller gets."""
        policy = ticket.state.policy
        lists = (policy.record_errors, policy.ignore_errors)
        wider = self.outcomes.get(ticket.service) or self.outcomes.get(service_of(ticket.service))
        if outcomes is None:
            outcomes = wider or DEFAULT
        elif outcomes.base is None and wider is not None:  # a channel's: over the service's
            outcomes = dataclasses.replace(outcomes, base=wider)
        return classify(ticket, exc, outcomes, lists)

    def succeeded(self, ticket: Ticket, now: float | None = None) -> None:
        """An ordinary attempt succeeded (at ``now``, when the caller read the clock then):
        :meth:`record` and :meth:`release` in one locked section (the common call's whole
        bookkeeping after it returns)."""
        if ticket.probe is not None or ticket.shadow is not None:
            self.record(ticket, None)
            self.release(ticket)
            return
        state = ticket.state
        if now is None:
            now = self.clock()
        with state.lock:
            if state.running or state.policy.slow_call is not None:
                self._timed(state, ticket, now, True)  # a slow success is still a success
            _count_success(state, now)

    @staticmethod
    def succeeded_plain(state: ServiceState, now: float) -> bool:
        """:meth:`succeeded` at ``now`` for a first attempt :func:`.take_plain` admitted,
        without its ticket; False (nothing counted) when the policy now judges attempts
        for slowness: the caller settles it with :meth:`succeeded` and a ticket."""
        with state.lock:
            if state.policy.slow_call is not None:
                return False
            _count_success(state, now)
        return True

    def record(self, ticket: Ticket, failure: Failure | None, shadow_would: bool = False) -> None:
        """Count one attempt's outcome for the fleet and the local breaker; ``shadow_would``:
        a candidate policy in shadow mode would retry it."""
        state = ticket.state
        probe, ticket.probe = ticket.probe, None
        if failure is not None and failure.counts is Counts.NEITHER:
            with state.lock:
                state.running.discard(ticket)
            self.admission.give_back(state, probe)  # the service was not judged
            return
        failed = failure is not None and failure.counts is Counts.FAILURE
        now = self.clock()
        with state.lock:
            tally = state.tally
            slow = self._timed(state, ticket, now, probe is None)
            failed_probe = failed or slow  # a slow probe says the service is not well yet
            if probe == "fleet":  # for its HALF_OPEN and grant only
                state.probe_ended(probe, failed_probe)
            elif failed:
                tally.failures += 1
                tally.trailing_failures += 1
            else:
                tally.successes += 1
                tally.trailing_failures = 0
            tally.shadow_retries += shadow_would
            if failed:
                state.budget.failed(now)
            else:
                state.budget.succeeded(now)
            if failed and failure is not None:
                error = failure.error
                name = error.error_type if isinstance(error, MissionControlError) else "Unclassified"
                tally.errors_by_type[name] += 1
                tally.errors_by_operation[ticket.operation] += 1
            if probe == "local":
                state.local.record_probes(now, "local", int(not failed_probe), int(failed_probe))
            elif probe is None:
                state.local.record(now, int(not failed), int(failed), int(failed))
        if (failed or probe == "fleet") and self.connection is not None:
            # a fleet probe's result is what its HALF_OPEN waits for, with the fleet's
            # calls kept off the service meanwhile: it goes now, not at the next interval
            self.connection.nudge()

    @staticmethod
    def _timed(state: ServiceState, ticket: Ticket, now: float, ordinary: bool) -> bool:
        """Judge an attempt that ended for slowness (lock held); True when it was slow.
        An ordinary call judged slow while running was counted then."""
        state.running.discard(ticket)
        rule = state.policy.slow_call
        if rule is None:
            return False
        if ticket.slow:
            return True
        slow = now - ticket.started >= rule.duration_threshold_secs
        if ordinary:
            state.tally.timed_calls += 1
            state.tally.slow_calls += int(slow)
            state.local.record_timing(now, 1, int(slow))
        return slow

    def _context(self, service: str, operation: str) -> ErrorContext:
        return ErrorContext(service, self.agent, operation, self.session_id)

    def with_context(self, error: BaseException, service: str, operation: str) -> BaseException:
        if isinstance(error, MissionControlError) and error.context is None:
            error.context = self._context(service, operation)
        return error

    # -- what telemetry and the fleet hear about recovery --------------------------

    def retrying(self, ticket: Ticket, attempt: int, delay: float, error: BaseException) -> None:
        if self.telemetry is not None:
            self.telemetry.retrying(ticket.service, attempt, delay, error)

    def recovered(self, state: ServiceState, succeeded: bool) -> None:
        """Count a call whose first try failed and that was retried or sent to a fallback."""
        with state.lock:
            state.tally.recovery_attempts += 1
            if succeeded:
                state.tally.recovery_successes += 1
        if self.telemetry is not None:
            self.telemetry.recovered(state.name, succeeded)

    def fell_back(self, state: ServiceState, fallback: str, served: bool) -> None:
        with state.lock:
            if served:
                state.tally.fallbacks_served += 1
            else:
                state.tally.fallbacks_failed += 1
        if self.telemetry is not None:
            self.telemetry.fell_back(state.name, fallback, served)
        if served:
            self.recovered(state, True)

    def spool_counted(self, service: str, spooled: int, replayed: int, dropped: int, held: int = 0) -> None:
        """Count writes a spool kept, made later, dropped (at its bound, or unmakeable), or
        set aside in its ``held.log``."""
        state = self.view.get(service)
        with state.lock:
            state.tally.spooled += spooled
            state.tally.spool_replayed += replayed
            state.tally.spool_dropped += dropped
            state.tally.spool_held += held

    def given_up(
        self,
        state: ServiceState,
        operation: str,
        error: BaseException,
        failure: Failure | None,
        attempted: bool,
    ) -> None:
        """Nothing saved the call: count it and tell telemetry when it is an outage."""
        if attempted:
            self.recovered(state, False)
        if self.telemetry is not None and (failure is None or failure.counts is Counts.FAILURE):
            self.telemetry.call_failed(error, state.name, operation)

    # -- hedging -------------------------------------------------------------------

    def hedging_for(
        self, service: str, idempotent: bool, fallbacks: Mapping[str, Any] | None
    ) -> Hedging | None:
        """The service's hedging, when this call may be hedged: it is idempotent (the
        caller's word or the policy's) and has no fallbacks (those follow the retry plan)."""
        policy = self.view.get(service).policy
        if policy.hedging is None or fallbacks or not (idempotent or policy.idempotent):
            return None
        return policy.hedging

    def hedge_meter(self, service: str) -> HedgeMeter:
        """``service``'s latencies and hedge budget (its endpoints share them)."""
        service = service_of(service)
        with self._pools_lock:
            meter = self._meters.get(service)
            if meter is None:
                meter = self._meters[service] = HedgeMeter(self.clock)
            return meter

    def in_thread(self, attempt: Callable[[float], Any], service: str) -> Callable[[float], Future[Any]]:
        """Attempts of a sync function, each on a thread of its own (so that the next one
        can go while it runs), in a copy of the caller's context, under its deadline; on
        ``service``'s own pool of at most :data:`HEDGE_THREADS` threads (made as needed).
        The endpoints of a service share its pool, so that endpoints coming and going
        (idle ones are forgotten) never add pools."""
        service = service_of(service)
        with self._pools_lock:
            pool = self._pools.get(service)
            if pool is None:
                name = f"mission-control-hedge-{service}" if service else "mission-control-hedge"
                pool = self._pools[service] = ThreadPoolExecutor(HEDGE_THREADS, thread_name_prefix=name)

        def start(left: float) -> Future[Any]:
            deadline = self.clock() + left
            return pool.submit(contextvars.copy_context().run, _under_deadline, attempt, left, deadline)

        return start

    # -- the loops -----------------------------------------------------------------

    def plan(
        self,
        service: str,
        *,
        operation: str = "",
        kind: str | None = None,
        timeout: float | None = None,
        cost: Mapping[str, float] | None = None,
        fallbacks: Mapping[str, Any] | None = None,
        idempotent: bool = False,
        outcomes: Outcomes | None = None,
    ) -> CallPlan:
        """The plan of one logical call (see :mod:`.attempts`)."""
        names = tuple(fallbacks) if fallbacks else ()
        return CallPlan(
            self, service, operation, kind, timeout, cost, names, idempotent, outcomes, _deadline.get()
        )

    def run(
        self,
        service: str,
        attempt: Callable[[float], T],
        *,
        operation: str = "",
        kind: str | None = None,
        timeout: float | None = None,
        cost: Mapping[str, float] | None = None,
        fallbacks: Mapping[str, Callable[[float], T]] | None = None,
        idempotent: bool = False,
        outcomes: Outcomes | None = None,
    ) -> T:
        """Run ``attempt(seconds_left)`` under the service's policy; returns its result or
        raises the classified error. Arguments as :meth:`plan`."""
        hedging = self.hedging_for(service, idempotent, fallbacks)
        if hedging is not None:
            run = HedgeRun(self, service, operation, kind, timeout, cost, outcomes, _deadline.get(), hedging)
            return run_hedged(run, self.in_thread(attempt, service), _result)  # type: ignore[no-any-return]
        names = tuple(fallbacks) if fallbacks else ()
        plan = CallPlan(
            self, service, operation, kind, timeout, cost, names, idempotent, outcomes, _deadline.get()
        )
        functions = {service: attempt, **fallbacks} if fallbacks else {service: attempt}
        return self.drive(plan, plan.start(), functions)  # type: ignore[no-any-return]

    def drive(
        self,
        plan: CallPlan,
        step: Step,
        functions: Mapping[str, Callable[[float], Any]],
        sleep: Callable[[float], None] | None = None,
    ) -> Any:
        """Carry out ``plan`` from ``step`` in this thread (``sleep``: how to wait, by
        default the executor's)."""
        sleep = sleep or self.sleep
        try:
            while True:
                if type(step) is Attempt:
                    token = _deadline.set(step.deadline)
                    try:
                        result = functions[step.target](step.left)
                    except Exception as exc:
                        step = plan.failed(exc)
                    else:
                        step = plan.succeeded(result)
                    finally:
                        _deadline.reset(token)
                elif type(step) is Sleep:
                    sleep(step.seconds)
                    step = plan.slept()
                else:
                    assert isinstance(step, Done)
                    if step.error is not None:
                        raise step.error
                    return step.result
        finally:
            plan.close()

    async def run_async(
        self,
        service: str,
        attempt: Callable[[float], Awaitable[T]],
        *,
        operation: str = "",
        kind: str | None = None,
        timeout: float | None = None,
        cost: Mapping[str, float] | None = None,
        fallbacks: Mapping[str, Callable[[float], Awaitable[T]]] | None = None,
        idempotent: bool = False,
        outcomes: Outcomes | None = None,
    ) -> T:
        """The asyncio form of :meth:`run`; the deadline cancels a slow attempt."""
        hedging = self.hedging_for(service, idempotent, fallbacks)
        if hedging is not None:
            run = HedgeRun(self, service, operation, kind, timeout, cost, outcomes, _deadline.get(), hedging)
            return await run_hedged_async(run, attempt)  # type: ignore[no-any-return]
        names = tuple(fallbacks) if fallbacks else ()
        plan = CallPlan(
            self, service, operation, kind, timeout, cost, names, idempotent, outcomes, _deadline.get()
        )
        functions = {service: attempt, **fallbacks} if fallbacks else {service: attempt}
        return await self.drive_async(plan, plan.start(), functions)  # type: ignore[no-any-return]

    async def drive_async(
        self, plan: CallPlan, step: Step, functions: Mapping[str, Callable[[float], Awaitable[Any]]]
    ) -> Any:
        try:
            while True:
                if type(step) is Attempt:
                    token = _deadline.set(step.deadline)
                    try:
                        async with asyncio.timeout(step.left):
                            result = await functions[step.target](step.left)
                    except Exception as exc:
                        step = plan.failed(exc)
                    else:
                        step = plan.succeeded(result)
                    finally:
                        _deadline.reset(token)
                elif type(step) is Sleep:
                    await self.async_sleep(step.seconds)
                    step = plan.slept()
                else:
                    assert isinstance(step, Done)
                    if step.error is not None:
                        raise step.error
                    return step.result
        finally:
            plan.close()


def _count_success(state: ServiceState, now: float) -> None:
    """An ordinary attempt's success at ``now``, counted (lock held); its bulkhead place freed."""
    tally = state.tally
    tally.successes += 1
    tally.trailing_failures = 0
    state.budget.succeeded(now)
    local = state.local
    if local.consecutive_failures or local.policy.failure_rate is not None:
        local.record(now, 1, 0, 0)  # else a success changes nothing there
    state.bulkhead.in_flight -= 1  # Bulkhead.leave, inline: every call passes here


def _shadow_admit(
    state: ServiceState, shadow: ShadowLimits, cost: Mapping[str, float] | None, now: float, admitted: bool
) -> ShadowLimits | None:
    """Put a call to the candidate policy's limits (``state.lock`` held) and count what it
    would have refused; returns ``shadow`` when the call holds a place in its bulkhead."""
    tally = state.tally
    tally.shadow_calls += 1
    refused = shadow.admit(cost, now, admitted)
    if refused is not None:
        tally.shadow_rejected_by_reason[refused] += 1
        return None
    return shadow if admitted else None
