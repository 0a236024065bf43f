"""The exponential wait in the OPEN state, driven by an injected clock: each HALF_OPEN whose
probe fails opens for longer, up to the policy's longest wait, and closing (or an operator)
starts the waits over. The control plane's stored record keeps the wait."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

POLICY = ServicePolicy(
    "llm", failure_threshold=2, success_threshold=1, wait_duration_secs=2.0, max_wait_duration_secs=10.0
)


def opened(policy: ServicePolicy = POLICY) -> tuple[CircuitBreaker, float]:
    breaker = CircuitBreaker("llm", policy, 0.0)
    assert breaker.record(0.0, 0, 2) is not None
    return breaker, 0.0


def fail_probe_after_wait(breaker: CircuitBreaker, now: float) -> tuple[float, float]:
    """Waits out the OPEN, lets the probe fail; returns (time reopened, wait it had)."""
    waited = breaker.open_remaining(now)
    now += waited
    assert breaker.tick(now - 0.001) is None  # not a moment early
    assert breaker.tick(now) is not None and breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire_probe(now, "a", ttl=5) == 1
    move = breaker.record_probes(now, "a", 0, 1)
    assert move is not None and move.new is BreakerState.OPEN
    return now, waited


def test_each_failed_half_open_waits_twice_as_long_up_to_the_longest() -> None:
    breaker, now = opened()
    waits = []
    for _ in range(5):
        now, waited = fail_probe_after_wait(breaker, now)
        waits.append(waited)
    assert waits == pytest.approx([2.0, 4.0, 8.0, 10.0, 10.0])
    assert breaker.open_remaining(now) == pytest.approx(10.0)


def test_closing_starts_the_waits_over() -> None:
    breaker, now = opened()
    for _ in range(3):
        now, _ = fail_probe_after_wait(breaker, now)
    now += breaker.open_remaining(now)
    breaker.tick(now)
    assert breaker.acquire_probe(now, "a", ttl=5) == 1
    assert breaker.record_probes(now, "a", 1, 0) is not None and breaker.state is BreakerState.CLOSED
    breaker.record(now + 1, 0, 2)
    assert breaker.state is BreakerState.OPEN
    assert breaker.open_remaining(now + 1) == pytest.approx(2.0)


@pytest.mark.parametrize("state", [BreakerState.FORCED_OPEN, BreakerState.DISABLED, BreakerState.CLOSED])
def test_an_operator_state_starts_the_waits_over(state: BreakerState) -> None:
    breaker, now = opened()
    for _ in range(3):
        now, _ = fail_probe_after_wait(breaker, now)
    breaker.force(now, state)
    breaker.force(now, BreakerState.CLOSED)
    breaker.record(now, 0, 2)
    assert breaker.open_remaining(now) == pytest.approx(2.0)


def test_a_multiplier_of_one_keeps_every_wait_the_same() -> None:
    breaker, now = opened(POLICY.replace(wait_duration_multiplier=1.0))
    waits = []
    for _ in range(3):
        now, waited = fail_probe_after_wait(breaker, now)
        waits.append(waited)
    assert waits == pytest.approx([2.0, 2.0, 2.0])


def test_a_new_policy_keeps_the_open_wait_and_sets_the_next() -> None:
    breaker, now = opened()
    now, _ = fail_probe_after_wait(breaker, now)  # OPEN for 4 s now
    breaker.update_policy(POLICY.replace(wait_duration_multiplier=3.0, max_wait_duration_secs=100.0))
    assert breaker.open_remaining(now) == pytest.approx(4.0)  # agents hold this expiry
    now, _ = fail_probe_after_wait(breaker, now)
    assert breaker.open_remaining(now) == pytest.approx(12.0)


def test_a_longest_wait_below_the_first_means_no_growth() -> None:
    assert POLICY.replace(max_wait_duration_secs=1.0).open_wait(2.0) == 2.0
    assert POLICY.open_wait(None) == 2.0 and POLICY.open_wait(6.0) == 10.0


def test_bad_wait_fields_are_all_named() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ServicePolicy("x", wait_duration_multiplier=0.5, max_wait_duration_secs=0)
    assert {f for f, _ in caught.value.violations} == {"wait_duration_multiplier", "max_wait_duration_secs"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_stored_record_keeps_the_wait_for_another_replica() -> None:
    clock = Clock()
    leader = FleetBreakers(lambda _: POLICY, clock=clock, wall=lambda: 1e9 + clock.now)
    leader.record("a", pb.OutcomeSummary(service="llm", failures=2, trailing_failures=2))
    for _ in range(2):  # waits 2 s, then 4 s: OPEN for 8 s now
        clock.now += leader.get("llm").open_remaining(clock.now)
        leader.tick()
        leader.request_probe("a", "llm")
        generation = leader.get("llm").generation
        leader.record("a", pb.OutcomeSummary(service="llm", probe_failures=1, probe_generation=generation))
    clock.now += 3.0
    assert leader.get("llm").open_remaining(clock.now) == pytest.approx(5.0)
    other = FleetBreakers(lambda _: POLICY, clock=clock, wall=lambda: 1e9 + clock.now)
    other.adopt("llm", leader.to_record("llm"), revision=7)
    assert other.to_proto("llm").open_remaining.ToMilliseconds() == 5000
    # its HALF_OPEN, stored, still knows the wait to grow from
    clock.now += 5.0
    leader.tick()
    assert leader.get("llm").state is BreakerState.HALF_OPEN
    other.adopt("llm", leader.to_record("llm"), revision=8)
    other.request_probe("a", "llm")
    generation = other.get("llm").generation
    other.record("a", pb.OutcomeSummary(service="llm", probe_failures=1, probe_generation=generation))
    assert other.get("llm").open_remaining(clock.now) == pytest.approx(10.0)


def test_a_stored_wait_is_kept_up_to_a_day_and_a_missing_one_is_the_first() -> None:
    clock = Clock()
    leader = FleetBreakers(lambda _: POLICY, clock=clock, wall=lambda: 1e9 + clock.now)
    leader.record("a", pb.OutcomeSummary(service="llm", failures=2, trailing_failures=2))
    record = pb.Breaker.FromString(leader.to_proto("llm").SerializeToString())
    for remaining in (None, -5.0, 1e6, 30.0):
        if remaining is None:
            record.ClearField("open_remaining")
        else:
            record.open_remaining.FromNanoseconds(int(remaining * 1e9))
        other = FleetBreakers(lambda _: POLICY, clock=clock, wall=lambda: 1e9 + clock.now)
        other.adopt("llm", _json(record), revision=3)
        assert other.get("llm").wait == {1e6: 86400.0, 30.0: 30.0}.get(remaining, 2.0)


def _json(record: pb.Breaker) -> bytes:
    return json_format.MessageToJson(record).encode()
