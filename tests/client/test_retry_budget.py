"""The per-agent retry budget: its floor (``min_retries_per_second``) keeps a quiet, working
service retryable but ends in a full outage, so the outage's retries stay near ``ratio`` ×
its calls at any call rate. Pure logic with an injected clock (``bench.amplification``
runs the agent's own executor); ``test_retry_amplification.py`` checks the bound with
real processes."""

from __future__ import annotations

import contextlib

import pytest
from mission_control.client.errors import LLMProviderUnavailable, MissionControlError
from mission_control.client.executor import Executor
from mission_control.client.limits import (
    EARNED_GAIN,
    EARNED_MAX,
    HEALTH_FLOOR,
    HEALTH_FULL,
    HEALTH_MIN,
    RECOVERY_SECS,
    SUCCESS_GAIN,
    RetryBudget,
)
from mission_control.client.view import LocalView

from bench import amplification, flapping
from bench.amplification import SERVICE

GOAL = 1.3


def test_a_new_budget_allows_its_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window_secs=10)
    assert budget.healthy(100.0)
    assert sum(budget.try_retry(100.0) for _ in range(20)) == 10  # 1/s x 10 s, no calls yet


def test_failures_end_the_floor_and_time_gives_back_only_what_successes_earned() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1, window_secs=10)
    for _ in range(HEALTH_FULL):
        budget.succeeded(100.0)
    assert budget.earned == pytest.approx(EARNED_MAX)
    for _ in range(HEALTH_FULL):
        budget.failed(100.0)
    assert budget.health == HEALTH_MIN
    assert not budget.healthy(100.0)
    assert not budget.try_retry(100.0)
    # no call at all since: time gives back what the successes before earned, at its pace
    back = 100.0 + RECOVERY_SECS * (HEALTH_FLOOR - HEALTH_MIN) / HEALTH_FULL
    assert not budget.healthy(back - 1)
    assert budget.healthy(back + 1)
    assert budget.try_retry(back + 1)
    assert budget.healthy(100.0 + 86400) and budget.health == pytest.approx(HEALTH_MIN + EARNED_MAX)
    assert budget.earned == pytest.approx(0.0)  # and no more


def test_a_success_does_not_make_up_for_a_failure() -> None:
    """A retry that succeeds after a failed attempt (a flapping service) leaves the score
    lower: it takes 1 / SUCCESS_GAIN successes to make up for one failure."""
    budget = RetryBudget(ratio=0.0, min_per_second=1, window_secs=10)
    for _ in range(HEALTH_FULL // 2):  # a service failing every other attempt, all at once
        budget.failed(100.0)
        budget.succeeded(100.0)
    assert not budget.healthy(100.0)
    for _ in range(round(1 / SUCCESS_GAIN)):
        budget.succeeded(100.0)
    assert budget.healthy(100.0)


def test_the_health_score_is_bounded_both_ways() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1, window_secs=10)
    for _ in range(1000):
        budget.succeeded(100.0)
    for _ in range(HEALTH_FULL // 2):
        budget.failed(100.0)
    assert not budget.healthy(100.0)  # a long healthy past does not fund a long outage
    assert budget.healthy(100.0 + 86400)  # beyond what it earned, given back with time
    for _ in range(1000):
        budget.failed(100.0 + 86400)
    assert budget.health == HEALTH_MIN
    assert not budget.healthy(100.0 + 2 * 86400)  # time alone gives nothing back
    # nor does a long outage block the floor for long: a few successes bring it back, for
    # a failure to be retried
    now = 100.0 + 2 * 86400
    for _ in range(round((HEALTH_FLOOR + 1 - HEALTH_MIN) / (SUCCESS_GAIN + EARNED_GAIN)) + 1):
        now += 60
        budget.succeeded(now)
    budget.failed(now)
    assert budget.healthy(now)


def test_the_ratio_holds_without_the_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window_secs=10)
    for _ in range(HEALTH_FULL):
        budget.failed(100.0)
    for _ in range(50):
        budget.record_call(100.0)
    assert sum(budget.try_retry(100.5) for _ in range(50)) == 10


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_quiet_working_service_retries_a_lone_failure() -> None:
    """One call a minute that mostly succeeds: a failing call gets all its retries (the
    ratio alone, 0.2 of the one call in the window, would give none)."""
    clock = _Clock()
    ex = Executor(LocalView({SERVICE: amplification.policy()}, clock=clock), sleep=lambda s: None)
    attempts = []

    def fails(_left: float) -> str:
        attempts.append(clock.now)
        raise LLMProviderUnavailable(SERVICE, "down")

    for _ in range(5):
        ex.run(SERVICE, lambda _left: "ok", operation="Echo")
        clock.now += 60
    with pytest.raises(LLMProviderUnavailable):
        ex.run(SERVICE, fails, operation="Echo")
    assert len(attempts) == 4  # max_retries = 3
    clock.now += 60
    ex.run(SERVICE, lambda _left: "ok", operation="Echo")
    attempts.clear()
    with pytest.raises(LLMProviderUnavailable):
        ex.run(SERVICE, fails, operation="Echo")
    assert len(attempts) == 1  # 4 failures a minute ago: the floor is spent for now
    for _ in range(10):  # ten minutes of one working call a minute
        clock.now += 60
        ex.run(SERVICE, lambda _left: "ok", operation="Echo")
    attempts.clear()
    with pytest.raises(LLMProviderUnavailable):
        ex.run(SERVICE, fails, operation="Echo")
    assert len(attempts) == 4  # time and the successes made it whole: retryable again


def test_an_outage_of_one_call_a_minute_is_not_retried_after_its_first_calls() -> None:
    clock = _Clock()
    ex = Executor(LocalView({SERVICE: amplification.policy()}, clock=clock), sleep=lambda s: None)
    attempts = []

    def fails(_left: float) -> str:
        attempts.append(clock.now)
        raise LLMProviderUnavailable(SERVICE, "down")

    for _ in range(30):
        with contextlib.suppress(MissionControlError):
            ex.run(SERVICE, fails, operation="Echo")
        clock.now += 60
    # the first call's 3 retries, then none: time gives back only what successes earned
    # (nothing here), and the ratio of one call per window funds none
    assert len(attempts) == 30 + 3


@pytest.mark.parametrize("rate", amplification.RATES)
def test_amplification_in_a_full_outage_stays_under_the_goal_at_any_rate(rate: float) -> None:
    after_healthy = amplification.run(rate, healthy=30, outage=60)
    from_the_start = amplification.run(rate, healthy=0, outage=60)
    assert after_healthy.calls >= 60 and from_the_start.calls >= 60
    assert 1.0 < after_healthy.amplification <= GOAL
    assert 1.0 < from_the_start.amplification <= GOAL


def test_with_a_floor_that_always_holds_a_slow_caller_amplifies_an_outage() -> None:
    """The budget as Linkerd and Finagle keep it (and this one did): the floor outweighs a
    slow caller's ratio."""
    assert amplification.run(1.0, healthy=30, outage=60, floor_always=True).amplification > 2.0
    assert amplification.run(5.0, healthy=30, outage=60, floor_always=True).amplification > 1.35


@pytest.mark.parametrize(
    ("pattern", "rate"),
    [(p, r) for p in flapping.PATTERNS for r in (1 / 60, *amplification.RATES) if r >= 1 or p != "periods"],
)  # 2 s periods are not seen by one call a minute
def test_amplification_of_a_flapping_service_stays_under_the_goal_at_any_rate(
    pattern: str, rate: float
) -> None:
    """A service failing every other attempt, half its attempts at random, or 2 s out of
    4: the retries that succeed do not keep the floor, so only the ratio funds retries
    (before: 2.00x failing every other attempt at one call a second, 1.52x at random)."""
    seconds = 3600 if rate and rate < 1 else 60
    run = flapping.run(pattern, rate, healthy=30, flapping=seconds)
    assert run.calls >= 60
    assert 1.0 < run.amplification <= GOAL, run


def test_a_service_flapping_at_one_call_a_second_loses_its_floor() -> None:
    """Every other attempt fails, so each call's first attempt fails and its retry
    succeeds: the score falls by 0.9 a call, less the time's 1/120, and the floor is gone
    within a few calls; the ratio alone then funds 0.2 retries a call (before: a success
    gave a whole point back, the score never fell, and every call was retried: 2.00x)."""
    run = flapping.run("alternate", 1.0, healthy=30, flapping=60)
    assert run.failed_calls > 0  # some calls were not retried
    assert run.amplification <= GOAL
