"""The slow-call rule: the breaker's decision, and how an agent judges its calls slow
(once each, while running or when they end), driven by an injected clock."""

from __future__ import annotations

import tomllib

import pytest
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.errors import CircuitBreakerOpen, ConfigurationError
from mission_control.client.executor import Executor
from mission_control.client.policy import ServicePolicy, SlowCall
from mission_control.client.view import LocalView

RULE = SlowCall(duration_threshold_secs=0.3, rate_threshold=0.5, minimum_calls=4, window_secs=1.0)
POLICY = ServicePolicy("llm_provider", slow_call=RULE, failure_threshold=100)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_share_of_slow_calls_opens_with_its_reason() -> None:
    breaker = CircuitBreaker("llm_provider", POLICY, 0.0)
    assert breaker.record_timing(0.0, 2, 1) is None
    assert breaker.record_timing(0.1, 1, 0) is None  # 1 of 3: under the rate and the minimum
    move = breaker.record_timing(0.2, 1, 1)
    assert move is not None and move.new is BreakerState.OPEN
    assert move.reason == "slow calls 50% ≥ 50% over 1 s"
    assert breaker.slow_calls == 2 and breaker.failures == 0


def test_too_few_calls_or_no_rule_never_open() -> None:
    breaker = CircuitBreaker("llm_provider", POLICY, 0.0)
    assert breaker.record_timing(0.0, 3, 3) is None
    assert breaker.state is BreakerState.CLOSED
    plain = CircuitBreaker("llm_provider", ServicePolicy("llm_provider"), 0.0)
    assert plain.record_timing(0.0, 100, 100) is None


def test_the_window_slides_so_old_fast_calls_stop_diluting() -> None:
    breaker = CircuitBreaker("llm_provider", POLICY, 0.0)
    assert breaker.record_timing(0.0, 40, 0) is None
    assert breaker.record_timing(0.5, 5, 5) is None  # 5 of 45
    move = breaker.record_timing(1.05, 5, 5)  # the fast ones left the window
    assert move is not None and move.new is BreakerState.OPEN


def test_closing_forgets_slow_calls() -> None:
    breaker = CircuitBreaker("llm_provider", POLICY, 0.0)
    breaker.record_timing(0.0, 3, 3)
    breaker.force(0.1, BreakerState.CLOSED)
    assert breaker.record_timing(0.2, 1, 1) is None


def executor(policy: ServicePolicy = POLICY) -> tuple[Executor, Clock]:
    clock = Clock()
    view = LocalView({policy.service: policy}, clock=clock)
    return Executor(view, sleep=lambda s: None), clock


def test_a_slow_call_succeeds_for_its_caller_and_counts_once() -> None:
    ex, clock = executor()

    def slow(_left: float) -> str:
        clock.now += 0.5
        return "answer"

    assert ex.run("llm_provider", slow) == "answer"
    tally = ex.view.get("llm_provider").drain(clock())
    assert tally is not None
    assert (tally.successes, tally.failures, tally.timed_calls, tally.slow_calls) == (1, 0, 1, 1)


def test_a_running_call_is_judged_slow_once_when_it_passes_the_duration() -> None:
    ex, clock = executor()
    ticket = ex.admit("llm_provider", "op", kind=None, timeout=None, cost=None)
    state = ex.view.get("llm_provider")
    clock.now += 0.2
    assert state.drain(clock()) is None  # not slow yet, not ended
    clock.now += 0.2
    running = state.drain(clock())
    assert running is not None and (running.timed_calls, running.slow_calls, running.successes) == (1, 1, 0)
    ex.record(ticket, None)
    ended = state.drain(clock())
    assert ended is not None and (ended.timed_calls, ended.slow_calls, ended.successes) == (0, 0, 1)
    assert not state.running


def test_without_a_control_plane_the_local_breaker_opens_on_slow_calls() -> None:
    ex, clock = executor(POLICY.replace(slow_call=SlowCall(0.3, 0.5, 4, 10.0)))

    def slow(_left: float) -> str:
        clock.now += 0.4
        return "answer"

    for _ in range(RULE.minimum_calls):
        ex.run("llm_provider", slow)
    with pytest.raises(CircuitBreakerOpen):
        ex.run("llm_provider", slow)
    assert "slow calls 100%" in ex.view.get("llm_provider").local.reason


def test_fast_calls_count_as_judged_and_not_slow() -> None:
    ex, clock = executor()
    for _ in range(3):
        ex.run("llm_provider", lambda _left: "fast")
    tally = ex.view.get("llm_provider").drain(clock())
    assert tally is not None and (tally.timed_calls, tally.slow_calls) == (3, 0)


def test_toml_takes_the_slow_call_rule_and_endpoint_bounds_and_names_every_bad_field() -> None:
    from mission_control.client.config import config_to_toml, load_config

    good = load_config(
        {
            "service_specific": {
                "llm_provider": {
                    "max_endpoints": 8,
                    "endpoint_idle_secs": 60,
                    "fallbacks": ["llm_provider/anthropic/claude"],
                    "slow_call": {"duration_threshold_secs": 0.5, "minimum_calls": 4},
                }
            }
        }
    )
    policy = good.service_specific["llm_provider"]
    assert policy.slow_call == SlowCall(0.5, 0.5, 4, 10.0)
    assert (policy.max_endpoints, policy.endpoint_idle_secs) == (8, 60)
    assert load_config(tomllib.loads(config_to_toml(good))) == good
    bad = {"max_endpoints": -1, "slow_call": {"rate_threshold": 0, "window_secs": -1, "speed": 1}}
    with pytest.raises(ConfigurationError) as caught:
        load_config({"service_specific": {"llm_provider": bad}})
    assert {field for field, _ in caught.value.violations} == {
        "service_specific.llm_provider.max_endpoints",
        "service_specific.llm_provider.slow_call.rate_threshold",
        "service_specific.llm_provider.slow_call.window_secs",
        "service_specific.llm_provider.slow_call.speed",
    }
