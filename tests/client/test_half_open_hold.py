"""A call that meets its fleet breaker HALF_OPEN without a probe permit waits (a little) for
it to end instead of going to its fallback at once: served by the service when the breaker
closes, by the fallback when it opens again — never sent to the service meanwhile (the
executor with an injected clock; the fleet's side in test_half_open_hold_fleet.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import CircuitBreakerOpen
from mission_control.client.executor import Executor
from mission_control.client.half_open_hold import HOLD_SECS, HOLD_SHARE
from mission_control.client.policy import ServicePolicy
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

SERVICE = "llm"
BACKUP = "llm_backup"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(state: BreakerState, generation: int) -> pb.Breaker:
    return pb.Breaker(name=SERVICE, state=int(state), generation=generation)


def _fleet(timeout: float = 2.0) -> tuple[LocalView, Clock, list[str], list[float]]:
    clock = Clock()
    policies = {
        SERVICE: ServicePolicy(service=SERVICE, timeout_secs=timeout, fallbacks=(BACKUP,)),
        BACKUP: ServicePolicy(service=BACKUP),
    }
    view = LocalView(policies, clock=clock)
    view.connected = True
    view.set_breaker(_breaker(BreakerState.HALF_OPEN, 3))
    return view, clock, [], []


def _run(
    view: LocalView, clock: Clock, called: list[str], slept: list[float], then: Callable[[], None]
) -> str:
    """One call with a fallback; ``then`` runs at the first sleep of the call (the push
    that ends the HALF_OPEN, or nothing)."""

    def sleep(secs: float) -> None:
        slept.append(secs)
        clock.now += secs
        if len(slept) == 3:
            then()

    def primary(_left: float) -> str:
        called.append(SERVICE)
        return "primary"

    def backup(_left: float) -> str:
        called.append(BACKUP)
        return "backup"

    ex = Executor(view, sleep=sleep)
    result: str = ex.run(SERVICE, primary, operation="generate", fallbacks={BACKUP: backup})
    return result


def test_a_call_held_by_a_half_open_that_closes_goes_to_the_service() -> None:
    view, clock, called, slept = _fleet()
    started = clock.now
    assert (
        _run(view, clock, called, slept, lambda: view.set_breaker(_breaker(BreakerState.CLOSED, 4)))
        == "primary"
    )
    assert called == [SERVICE]  # never the backup: the service would serve it, and did
    assert 0 < clock.now - started <= HOLD_SECS


def test_a_call_held_by_a_half_open_that_opens_again_goes_to_the_fallback_only() -> None:
    view, clock, called, slept = _fleet()
    assert (
        _run(view, clock, called, slept, lambda: view.set_breaker(_breaker(BreakerState.OPEN, 4))) == "backup"
    )
    assert called == [BACKUP]  # the service got nothing


def test_a_call_held_by_a_half_open_runs_as_the_probe_when_a_permit_comes() -> None:
    view, clock, called, slept = _fleet()
    grant = pb.ProbeGrant(service=SERVICE, permits=1, generation=3)
    grant.ttl.FromNanoseconds(int(5e9))
    assert _run(view, clock, called, slept, lambda: view.grant(grant)) == "primary"
    assert called == [SERVICE]
    tally = view.get(SERVICE).drain(clock())
    assert tally is not None and tally.probe_successes == 1  # it ran as the fleet's probe


@pytest.mark.parametrize("timeout", [2.0, 0.3])
def test_a_half_open_that_lasts_refuses_the_held_call_after_the_hold(timeout: float) -> None:
    view, clock, called, slept = _fleet(timeout)
    started = clock.now
    assert _run(view, clock, called, slept, lambda: None) == "backup"
    assert called == [BACKUP]
    assert clock.now - started == pytest.approx(min(HOLD_SECS, HOLD_SHARE * timeout))


def test_without_a_fallback_the_held_call_is_refused_after_the_hold() -> None:
    view, clock, called, _slept = _fleet()
    ex = Executor(view, sleep=lambda secs: setattr(clock, "now", clock.now + secs))
    with pytest.raises(CircuitBreakerOpen):
        ex.run(SERVICE, lambda _left: called.append(SERVICE), operation="generate")
    assert called == []


def test_a_closed_or_open_breaker_holds_nothing() -> None:
    for state, expected in ((BreakerState.CLOSED, "primary"), (BreakerState.OPEN, "backup")):
        view, clock, called, slept = _fleet()
        view.set_breaker(_breaker(state, 4))
        assert _run(view, clock, called, slept, lambda: None) == expected
        assert slept == []


def test_the_time_held_counts_against_the_calls_own_timeout() -> None:
    """A call of 1 s held 0.5 s... then served gets what is left of its second, not a new one
    (it ended 1.31 s after it began, against its timeout of 1 s)."""
    view, clock, _called, slept = _fleet(timeout=1.0)
    lefts: list[float] = []
    started = clock.now

    def sleep(secs: float) -> None:
        slept.append(secs)
        clock.now += secs
        if len(slept) == 3:
            view.set_breaker(_breaker(BreakerState.CLOSED, 4))

    ex = Executor(view, sleep=sleep)
    ex.run(SERVICE, lambda left: lefts.append(left), operation="generate")
    held = clock.now - started
    assert held > 0 and lefts == [pytest.approx(1.0 - held)]


def test_an_agent_whose_link_is_down_holds_no_call() -> None:
    """No permit and no CLOSED can come without the link: the lost-link rules hold the
    HALF_OPEN, and a call is refused at once rather than after 0.5 s."""
    view, clock, called, slept = _fleet()
    view.forget_fleet()  # the stream ended
    assert view.fleet_in_force(view.get(SERVICE), clock()) is not None  # held all the same
    assert _run(view, clock, called, slept, lambda: None) == "backup"
    assert slept == [] and called == [BACKUP]


def test_past_the_most_calls_holding_a_call_is_refused_at_once() -> None:
    view, clock, called, _slept = _fleet()
    ex = Executor(view, sleep=lambda secs: setattr(clock, "now", clock.now + secs))
    assert ex.holds.begin("another call", clock() + 10, clock())
    ex.holds.most = 1
    started = clock.now
    out = ex.run(
        SERVICE, lambda _left: "primary", operation="generate", fallbacks={BACKUP: lambda _l: "backup"}
    )
    assert out == "backup" and clock.now == started and called == []
    ex.holds.end("another call")  # its hold over, the next call holds again
    out = ex.run(
        SERVICE, lambda _left: "primary", operation="generate", fallbacks={BACKUP: lambda _l: "backup"}
    )
    assert out == "backup" and clock.now > started and len(ex.holds) == 0
