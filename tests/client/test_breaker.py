"""The breaker state machine, driven by an injected clock."""

from __future__ import annotations

import pytest
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.policy import FailureRate, default_policy

POLICY = default_policy("llm_provider")  # 5 failures, 3 successes, 60 s wait


def tripped(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker("llm_provider", POLICY, now)
    assert breaker.record(now, 0, 5) is not None
    return breaker


def test_consecutive_failures_open_at_threshold() -> None:
    breaker = CircuitBreaker("llm_provider", POLICY, 0.0)
    assert breaker.record(0.0, 0, 4) is None
    assert breaker.state is BreakerState.CLOSED
    move = breaker.record(0.1, 0, 1)
    assert move is not None and (move.old, move.new) == (BreakerState.CLOSED, BreakerState.OPEN)
    assert breaker.failures == 5 and move.reason == "5 consecutive failures"


def test_a_success_resets_the_count_to_trailing_failures() -> None:
    breaker = CircuitBreaker("llm_provider", POLICY, 0.0)
    breaker.record(0.0, 0, 4)
    breaker.record(0.0, 1, 2, trailing_failures=1)
    assert breaker.consecutive_failures == 1
    breaker.record(0.0, 0, 3)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(0.0, 0, 1)
    assert breaker.state is BreakerState.OPEN


def test_open_waits_then_half_open() -> None:
    breaker = tripped(10.0)
    assert breaker.open_remaining(40.0) == pytest.approx(30.0)
    assert breaker.tick(69.9) is None
    move = breaker.tick(70.0)
    assert move is not None and move.new is BreakerState.HALF_OPEN


def test_half_open_permits_are_bounded_fleet_wide() -> None:
    breaker = tripped()
    breaker.tick(60.0)
    assert breaker.acquire_probe(60.0, "agent-a", ttl=5, count=2) == 1  # one probe first
    assert breaker.acquire_probe(60.0, "agent-b", ttl=5) == 0
    assert breaker.record_probes(60.1, "agent-a", 1, 0) is None  # it succeeded: the rest may go
    assert breaker.acquire_probe(60.1, "agent-a", ttl=5, count=2) == 2
    assert breaker.acquire_probe(60.1, "agent-b", ttl=5, count=5) == 1
    assert breaker.acquire_probe(60.1, "agent-c", ttl=5) == 0
    assert breaker.permits_out(60.1) == 3
    # unused permits lapse, and can then go to another agent
    assert breaker.permits_out(65.1) == 0
    assert breaker.acquire_probe(65.1, "agent-c", ttl=5) == 1


def test_probe_successes_close_and_a_probe_failure_reopens() -> None:
    breaker = tripped()
    breaker.tick(60.0)
    breaker.acquire_probe(60.0, "a", ttl=5, count=3)
    assert breaker.record_probes(60.5, "a", 2, 0) is None
    move = breaker.record_probes(60.6, "a", 1, 0)
    assert move is not None and move.new is BreakerState.CLOSED
    assert breaker.failures == 0 and breaker.consecutive_failures == 0

    breaker = tripped()
    breaker.tick(60.0)
    breaker.acquire_probe(60.0, "a", ttl=5)
    move = breaker.record_probes(61.0, "a", 0, 1)
    assert move is not None and move.new is BreakerState.OPEN
    assert breaker.open_remaining(61.0) == pytest.approx(60.0)


def test_ordinary_outcomes_do_not_move_open_or_half_open() -> None:
    breaker = tripped()
    assert breaker.record(1.0, 10, 0) is None
    assert breaker.state is BreakerState.OPEN
    breaker.tick(60.0)
    assert breaker.record(60.0, 10, 0) is None
    assert breaker.state is BreakerState.HALF_OPEN


def test_failure_rate_window() -> None:
    policy = POLICY.replace(
        failure_threshold=1000, failure_rate=FailureRate(0.5, minimum_calls=10, window_secs=10)
    )
    breaker = CircuitBreaker("x", policy, 0.0)
    assert breaker.record(0.0, 4, 4, trailing_failures=0) is None  # 8 calls: too few
    move = breaker.record(1.0, 0, 2, trailing_failures=2)
    assert move is not None and move.new is BreakerState.OPEN
    assert "failure rate" in move.reason
    # old buckets leave the window
    breaker = CircuitBreaker("x", policy, 0.0)
    breaker.record(0.0, 0, 9)
    assert breaker.record(20.0, 10, 1, trailing_failures=0) is None


def test_operator_states() -> None:
    breaker = CircuitBreaker("x", POLICY, 0.0)
    breaker.force(0.0, BreakerState.FORCED_OPEN, "maintenance")
    assert breaker.state.rejects and breaker.reason == "maintenance"
    assert breaker.tick(1e9) is None
    breaker.force(1.0, BreakerState.DISABLED)
    assert breaker.record(1.0, 0, 100) is None
    generation = breaker.generation
    breaker.force(2.0, BreakerState.CLOSED)
    assert breaker.state is BreakerState.CLOSED and breaker.generation == generation + 1
    with pytest.raises(ValueError):
        breaker.force(3.0, BreakerState.HALF_OPEN)
