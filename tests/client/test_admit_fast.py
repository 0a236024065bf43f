"""The common call's admission shortcut (``client.admit_fast``) decides and counts as the
full path does: two agents with an injected clock see the same steps, one admitted through
:meth:`Executor.enter_state` (the shortcut first), the other through every gate
(:meth:`Executor.enter_full`); where the shortcut must not decide, it leaves the call to the
full path without changing anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mission_control.client.admission import Refused, Ticket
from mission_control.client.admit_fast import admit_fast
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import LLMProviderUnavailable
from mission_control.client.executor import Executor
from mission_control.client.policy import FleetLimits, ServicePolicy
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

SERVICE = "llm_provider"
BASE = ServicePolicy(service=SERVICE, failure_threshold=1, wait_duration_secs=10, max_retries=0)


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def agent(policy: ServicePolicy, candidate: ServicePolicy | None = None) -> tuple[Executor, Clock]:
    clock = Clock()
    view = LocalView({SERVICE: policy}, clock=clock)
    if candidate is not None:
        view.set_shadow(SERVICE, candidate)
    return Executor(view, sleep=lambda _: None), clock


def fast(ex: Executor) -> Ticket | Refused | None:
    return admit_fast(ex, ex.view.get(SERVICE), "Echo", None, 5.0, None, ex.clock())


def full(ex: Executor) -> Ticket | Refused:
    return ex.enter_full(ex.view.get(SERVICE), "Echo", None, 5.0, None, None, True, ex.clock())


def shortcut(ex: Executor) -> Ticket | Refused:
    return ex.enter_state(ex.view.get(SERVICE), "Echo", None, 5.0, None)


def seen(ex: Executor, decided: Ticket | Refused) -> tuple[Any, ...]:
    """What a decision and the service's state say, comparable between two agents."""
    state = ex.view.get(SERVICE)
    tally = state.tally
    if type(decided) is Refused:
        what: tuple[Any, ...] = ("refused", decided.reason, type(decided.error).__name__, decided.wait)
    else:
        assert type(decided) is Ticket
        what = ("ticket", decided.probe, decided.deadline, decided.kind, decided.shadow is not None)
    counts = (
        tally.successes, tally.failures, tally.rejected, dict(tally.rejected_by_reason),
        tally.shadow_calls, dict(tally.shadow_rejected_by_reason),
        state.bulkhead.in_flight, state.bucket.used(ex.clock()), state.local.state,
    )  # fmt: skip
    return what, counts


def fail(ex: Executor, ticket: Ticket | Refused) -> None:
    assert type(ticket) is Ticket
    ex.record(ticket, ex.classify(ticket, LLMProviderUnavailable("Echo", "down")))
    ex.release(ticket)


def both(setup: Callable[[Executor, Clock], None], policy: ServicePolicy = BASE, **kw: Any) -> None:
    """The same steps on two agents: the shortcut must not decide, and both count alike."""
    a, clock_a = agent(policy, **kw)
    b, clock_b = agent(policy, **kw)
    setup(a, clock_a)
    setup(b, clock_b)
    for _ in range(3):
        assert fast(a) is None  # decided nothing, changed nothing: the full path decides
        via_shortcut, via_full = shortcut(a), full(b)
        assert seen(a, via_shortcut) == seen(b, via_full)
        for ex, decided in ((a, via_shortcut), (b, via_full)):
            if type(decided) is Ticket and decided.probe is None:  # a probe stays in flight
                ex.succeeded(decided)


def test_an_ordinary_call_is_decided_by_the_shortcut_and_counts_as_the_full_path() -> None:
    a, _ = agent(BASE)
    b, _ = agent(BASE)
    for _ in range(3):
        via_shortcut, via_full = fast(a), full(b)
        assert type(via_shortcut) is Ticket
        assert seen(a, via_shortcut) == seen(b, via_full)
        a.succeeded(via_shortcut)
        b.succeeded(via_full)  # type: ignore[arg-type]
        assert seen(a, via_shortcut) == seen(b, via_full)


def test_a_connected_fleet_breaker_closed_takes_the_shortcut_and_open_does_not() -> None:
    def fleet(state: BreakerState) -> Callable[[Executor, Clock], None]:
        def setup(ex: Executor, _clock: Clock) -> None:
            ex.view.connected = True
            message = pb.Breaker(name=SERVICE, state=int(state), generation=2, failures=5)
            message.open_remaining.FromNanoseconds(10**10)
            ex.view.set_breaker(message)

        return setup

    a, clock = agent(BASE)
    fleet(BreakerState.CLOSED)(a, clock)
    assert type(fast(a)) is Ticket
    a.view.connected = False  # a fleet state no longer known to be in force: the full path
    assert fast(a) is None
    both(fleet(BreakerState.OPEN))


def test_a_local_breaker_open_goes_by_the_full_path() -> None:
    both(lambda ex, _clock: fail(ex, full(ex)))


def test_a_half_open_probe_goes_by_the_full_path() -> None:
    def half_open(ex: Executor, clock: Clock) -> None:
        fail(ex, full(ex))
        clock.now += 11  # past the wait: HALF_OPEN, one local probe, then refused

    both(half_open)
    a, clock = agent(BASE)
    half_open(a, clock)
    probe = shortcut(a)
    assert type(probe) is Ticket and probe.probe == "local"


def test_an_empty_bucket_goes_by_the_full_path_untouched() -> None:
    policy = BASE.replace(rate_limit_requests=2, rate_limit_window_secs=3600)

    def empty(ex: Executor, _clock: Clock) -> None:
        for _ in range(2):
            ex.succeeded(full(ex))  # type: ignore[arg-type]

    both(empty, policy)
    a, clock = agent(policy)
    empty(a, clock)
    state = a.view.get(SERVICE)
    before = (state.bucket.used(clock()), state.budget.record_call, state.bulkhead.in_flight)
    assert fast(a) is None
    assert (state.bucket.used(clock()), state.budget.record_call, state.bulkhead.in_flight) == before


def test_a_candidate_policy_in_shadow_mode_goes_by_the_full_path() -> None:
    candidate = BASE.replace(rate_limit_requests=1, max_concurrent=1)
    both(lambda _ex, _clock: None, candidate=candidate)


def test_a_full_bulkhead_goes_by_the_full_path() -> None:
    held: list[Any] = []
    both(lambda ex, _clock: held.append(full(ex)), BASE.replace(max_concurrent=1))


def test_a_fleet_rate_limit_with_units_left_takes_the_shortcut_and_counts_alike() -> None:
    fleet = FleetLimits(rate_limit=True, safe_share=0.5, lease_secs=1.0)
    policy = BASE.replace(rate_limit_requests=4, rate_limit_window_secs=1, fleet=fleet)
    (a, clock_a), (b, clock_b) = agent(policy), agent(policy)
    went = []
    for step in range(8):
        admitted_a = fast(a)
        if admitted_a is None:
            admitted_a = full(a)
        else:
            went.append(step)
        admitted_b = full(b)
        assert seen(a, admitted_a) == seen(b, admitted_b)
        budgets = [ex.view.get(SERVICE).leased[f"{SERVICE}.requests"] for ex in (a, b)]
        assert budgets[0].left == budgets[1].left
        for ex, admitted in ((a, admitted_a), (b, admitted_b)):
            if type(admitted) is Ticket:
                ex.succeeded(admitted)
        if step == 3:  # the next period: its safe share again
            clock_a.now += 1.0
            clock_b.now += 1.0
    # 2 units a period without a lease, then the full path refuses; a new period's first
    # call goes by the full path too (the budget rolls its period there)
    assert went == [0, 1, 5]
