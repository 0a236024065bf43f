"""A breaker's refusal says the state that refused the call: the seed's text for an OPEN
breaker, HALF_OPEN while only probes pass, and an operator's FORCED_OPEN with the reason
the operator gave (injected clock, the fleet state as the control plane pushes it)."""

from __future__ import annotations

from mission_control.client.admission import Admission, Refused
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import CircuitBreakerOpen
from mission_control.client.view import LocalView

from tests.client.test_half_open_link_lost import SERVICE, breaker, connected_at


def refusal(view: LocalView, now: float) -> CircuitBreakerOpen:
    verdict = Admission(view, None).breaker(view.get(SERVICE), now)
    assert isinstance(verdict, Refused), verdict
    assert isinstance(verdict.error, CircuitBreakerOpen)
    return verdict.error


def test_a_fleet_open_refuses_with_the_seed_text() -> None:
    view, clock = connected_at(BreakerState.OPEN, open_remaining=30)
    message = breaker(BreakerState.OPEN, 5, open_remaining=30)
    message.failures = 5
    view.set_breaker(message)
    error = refusal(view, clock())
    assert str(error) == f"Circuit breaker OPEN for service '{SERVICE}' (failed 5 times)"


def test_a_fleet_half_open_says_so() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    message = breaker(BreakerState.HALF_OPEN, 5)
    message.failures = 5
    view.set_breaker(message)
    error = refusal(view, clock())  # no permit held: not one of its probes
    assert (error.state, error.failures) == ("HALF_OPEN", 5)
    assert str(error) == (
        f"Circuit breaker HALF_OPEN for service '{SERVICE}' (failed 5 times; only its probe calls pass)"
    )


def test_an_operators_forced_open_gives_the_operators_reason() -> None:
    view, clock = connected_at(BreakerState.CLOSED)
    message = breaker(BreakerState.FORCED_OPEN, 1)
    message.reason = "provider maintenance until 14:00"
    view.set_breaker(message)
    error = refusal(view, clock())
    assert (error.state, error.reason, error.retry_after) == (
        "FORCED_OPEN",
        "provider maintenance until 14:00",
        None,
    )
    assert str(error) == (
        f"Circuit breaker FORCED_OPEN for service '{SERVICE}' "
        "(forced open by an operator: provider maintenance until 14:00)"
    )
    assert "failed" not in str(error)


def test_a_forced_open_without_a_reason_does_not_repeat_the_default_one() -> None:
    view, clock = connected_at(BreakerState.CLOSED)
    message = breaker(BreakerState.FORCED_OPEN, 1)
    message.reason = "set to FORCED_OPEN by operator"  # what the engine stores without one
    view.set_breaker(message)
    assert str(refusal(view, clock())) == (
        f"Circuit breaker FORCED_OPEN for service '{SERVICE}' (forced open by an operator, no reason given)"
    )


def test_the_local_breaker_says_its_own_state() -> None:
    view, clock = connected_at(BreakerState.CLOSED)
    view.apply_snapshot({}, [])  # no fleet state: the local breaker decides
    state = view.get(SERVICE)
    policy = state.policy
    state.local.record(clock(), 0, policy.failure_threshold, policy.failure_threshold)
    opened = refusal(view, clock())
    assert str(opened) == (
        f"Circuit breaker OPEN for service '{SERVICE}' (failed {policy.failure_threshold} times)"
    )
    clock.now += state.local.open_remaining(clock()) + 0.01
    state.local.tick(clock())
    assert state.local.state is BreakerState.HALF_OPEN
    assert state.local.acquire_probe(clock(), "local", 100.0)  # its one probe is out
    assert refusal(view, clock()).state == "HALF_OPEN"
