"""The adaptive hedge delay's latency tracker and the hedge budget: pure, on an injected clock."""

from __future__ import annotations

import dataclasses

import pytest
from mission_control.client import ConfigurationError
from mission_control.client.hedge_delay import (
    HEDGE_BURST,
    HEDGE_START,
    REFRESH,
    HedgeBudget,
    HedgeMeter,
    LatencyTracker,
    samples_needed,
)
from mission_control.client.policy import Hedging


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_percentile_is_read_from_the_window_within_five_percent() -> None:
    tracker = LatencyTracker(Clock())
    for i in range(1, 101):
        tracker.record(i / 1000)  # 1 ms .. 100 ms
    p95 = tracker.percentile(95)
    assert p95 is not None and 0.095 <= p95 <= 0.095 * 1.05 * 1.05
    p50 = tracker.percentile(50)
    assert p50 is not None and 0.050 <= p50 <= 0.050 * 1.05 * 1.05


def test_there_is_no_percentile_until_the_window_holds_enough_samples() -> None:
    tracker = LatencyTracker(Clock())
    needed = samples_needed(99)
    assert needed == 200 and samples_needed(50) == 20
    for _ in range(needed - 1):
        tracker.record(0.05)
    assert tracker.percentile(99) is None
    tracker.record(0.05)
    assert tracker.percentile(99) is not None


def test_old_latencies_leave_the_window() -> None:
    clock = Clock()
    tracker = LatencyTracker(clock, window_secs=10)
    for _ in range(50):
        tracker.record(2.0)
    clock.now += 6  # a new half: the slow ones are in the older half, still counted
    for _ in range(50):
        tracker.record(0.01)
    assert tracker.samples == 100 and tracker.percentile(95) == pytest.approx(2.0, rel=0.06)
    clock.now += 5  # another half: the slow ones are gone
    assert tracker.samples == 50
    p95 = tracker.percentile(95)
    assert p95 is not None and p95 < 0.011
    clock.now += 10  # a whole window without calls: nothing is left
    assert tracker.samples == 0 and tracker.percentile(95) is None


def test_a_percentile_is_worked_out_again_after_refresh_records() -> None:
    tracker = LatencyTracker(Clock())
    for _ in range(40):
        tracker.record(0.01)
    first = tracker.percentile(95)
    for _ in range(REFRESH - 1):
        tracker.record(5.0)
    assert tracker.percentile(95) == first  # cached: one computation per REFRESH records
    tracker.record(5.0)
    changed = tracker.percentile(95)
    assert changed is not None and changed > 4


def test_the_hedge_budget_never_lets_hedges_outnumber_the_ratio_of_calls() -> None:
    budget = HedgeBudget()
    spent = 0
    for calls in range(1, 1001):
        budget.call(0.1)
        while budget.try_spend():  # as many hedges as it allows
            spent += 1
        assert spent <= 0.1 * calls + HEDGE_START + 1e-9
    assert spent in (100 + HEDGE_START - 1, 100 + HEDGE_START)  # float sums of 0.1


def test_the_hedge_budget_saves_up_at_most_a_burst() -> None:
    budget = HedgeBudget()
    for _ in range(10_000):
        budget.call(0.1)
    assert sum(budget.try_spend() for _ in range(100)) == HEDGE_BURST
    budget.refund()
    assert budget.try_spend() and not budget.try_spend()


def test_the_meter_delays_by_the_percentile_floored_and_falls_back_to_the_fixed_delay() -> None:
    meter = HedgeMeter(Clock())
    adaptive = Hedging(delay_secs=0.3, delay_percentile=90, min_delay_secs=0.02)
    assert meter.delay(adaptive) == 0.3  # no samples yet
    for _ in range(100):
        meter.succeeded(0.05)
    assert meter.delay(adaptive) == pytest.approx(0.05, rel=0.06)
    assert meter.delay(dataclasses.replace(adaptive, min_delay_secs=0.2)) == 0.2
    assert meter.delay(Hedging(delay_secs=0.3)) == 0.3  # a fixed delay ignores the samples


def test_without_a_hedge_budget_the_meter_never_refuses() -> None:
    meter = HedgeMeter(Clock())
    assert all(meter.spend(Hedging()) for _ in range(100))
    budgeted = Hedging(max_extra_ratio=0.5)
    assert all(meter.spend(budgeted) for _ in range(int(HEDGE_START)))  # a fresh agent's allowance
    assert not meter.spend(budgeted)
    meter.called(budgeted)
    meter.called(budgeted)
    assert meter.spend(budgeted) and not meter.spend(budgeted)


def test_bad_adaptive_fields_are_all_listed() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Hedging(delay_percentile=20, min_delay_secs=-1, max_extra_ratio=1.5)
    assert {field for field, _ in caught.value.violations} == {
        "delay_percentile",
        "min_delay_secs",
        "max_extra_ratio",
    }
    with pytest.raises(ConfigurationError) as caught:
        Hedging(delay_percentile=100, max_extra_ratio=-0.1)
    assert {field for field, _ in caught.value.violations} == {"delay_percentile", "max_extra_ratio"}


def test_a_tiny_positive_hedge_budget_is_refused_naming_the_field() -> None:
    for tiny in (1e-300, 0.0009):
        with pytest.raises(ConfigurationError) as caught:
            Hedging(max_extra_ratio=tiny)
        assert {field for field, _ in caught.value.violations} == {"max_extra_ratio"}
    assert Hedging(max_extra_ratio=0).max_extra_ratio == 0  # no hedge budget
    assert Hedging(max_extra_ratio=0.001).max_extra_ratio == 0.001
