"""Failure-rate and slow-call windows: validation refuses lengths outside 0.1 s .. 1 day with
a clear error, and a breaker handed such a policy anyway (a value that got past validation)
keeps judging calls instead of raising on every report."""

from __future__ import annotations

import math

import pytest
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.config import load_config
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import FailureRate, ServicePolicy, SlowCall

EXTREMES = [5e-324, 1e-320, 1e-12, 1e-6, 0.05, 86400.0 * 2, math.inf, math.nan]


@pytest.mark.parametrize("window", [5e-324, 1e-320, 1e-6, 0.099, 86400.5])
def test_validation_refuses_windows_outside_the_bounds_naming_each_field(window: float) -> None:
    bad = {
        "failure_rate": {"threshold": 0.5, "window_secs": window},
        "slow_call": {"window_secs": window},
    }
    with pytest.raises(ConfigurationError) as caught:
        load_config({"service_specific": {"llm_provider": bad}})
    found = dict(caught.value.violations)
    prefix = "service_specific.llm_provider"
    assert set(found) == {f"{prefix}.failure_rate.window_secs", f"{prefix}.slow_call.window_secs"}
    assert all(message in ("must be >= 0.1", "must be <= 86400") for message in found.values())


def test_the_bounds_themselves_are_accepted() -> None:
    assert SlowCall(window_secs=0.1).window_secs == 0.1
    assert FailureRate(window_secs=86400.0).window_secs == 86400.0


def _unchecked(rule: object, window: float) -> object:
    object.__setattr__(rule, "window_secs", window)  # as if validation had been skipped
    return rule


@pytest.mark.parametrize("window", EXTREMES)
def test_a_breaker_with_an_unchecked_window_still_judges_calls(window: float) -> None:
    slow = _unchecked(SlowCall(duration_threshold_secs=0.1, rate_threshold=0.5, minimum_calls=1), window)
    rate = _unchecked(FailureRate(threshold=0.5, minimum_calls=1), window)
    by_slowness = CircuitBreaker("s", ServicePolicy("s", slow_call=slow), 100.0)  # type: ignore[arg-type]
    by_rate = CircuitBreaker("r", ServicePolicy("r", failure_rate=rate, failure_threshold=1000), 100.0)  # type: ignore[arg-type]
    for now in (100.0, 100.5, 1e6):
        assert by_slowness.record_timing(now, 2, 0) is None
        assert by_rate.record(now, 2, 0) is None
    moved = by_slowness.record_timing(1e6 + 1, 20, 20)
    assert moved is not None and moved.new is BreakerState.OPEN
    moved = by_rate.record(1e6 + 1, 0, 20)
    assert moved is not None and moved.new is BreakerState.OPEN
