"""Per-endpoint breakers within a service, in one agent (injected clock): each endpoint
trips alone, shares the service's limits, falls back to another endpoint, and the
number of endpoints is capped with idle ones forgotten."""

from __future__ import annotations

import pytest
from mission_control.client import MissionControl
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import CircuitBreakerOpen, ConfigurationError, ResourceExhausted
from mission_control.client.policy import ServicePolicy, breaker_name_problem

POLICY = ServicePolicy(
    "llm_provider",
    max_retries=0,
    failure_threshold=2,
    fallbacks=("llm_provider/anthropic/claude",),
    max_endpoints=2,
    endpoint_idle_secs=10.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def agent(policy: ServicePolicy = POLICY) -> tuple[MissionControl, Clock]:
    mc = MissionControl("endpoints-agent", config={policy.service: policy})
    clock = Clock()
    mc.view.clock = clock
    mc.executor.clock = clock
    return mc, clock


def down() -> str:
    raise ConnectionRefusedError("down")


def test_one_endpoint_opens_alone_and_the_others_serve() -> None:
    mc, _ = agent()
    gpt = mc.guard("llm_provider", endpoint="openai/gpt-x")(down)
    for _ in range(2):
        with pytest.raises(Exception, match="down"):
            gpt()
    with pytest.raises(CircuitBreakerOpen):
        gpt()
    assert mc.view.get("llm_provider/openai/gpt-x").local.state is BreakerState.OPEN
    assert mc.guard("llm_provider", endpoint="openai/gpt-y")(lambda: "y")() == "y"
    assert mc.guard("llm_provider")(lambda: "service")() == "service"
    assert mc.view.get("llm_provider").local.state is BreakerState.CLOSED


def test_fallbacks_name_endpoints() -> None:
    mc, _ = agent()
    fallbacks = {"llm_provider/anthropic/claude": lambda: "claude"}
    gpt = mc.guard("llm_provider", endpoint="openai/gpt-x", fallbacks=fallbacks)(down)
    assert [gpt() for _ in range(4)] == ["claude"] * 4  # failed twice, then refused: served each time
    assert mc.view.get("llm_provider/openai/gpt-x").local.state is BreakerState.OPEN
    tally = mc.view.get("llm_provider/openai/gpt-x").tally
    assert tally.fallbacks_served == 4 and tally.failures == 2


def test_endpoints_share_the_service_limits() -> None:
    mc, _ = agent(POLICY.replace(rate_limit_requests=3))
    for endpoint in ("a", "b", "a"):
        assert mc.guard("llm_provider", endpoint=endpoint)(lambda: "ok")() == "ok"
    with pytest.raises(ResourceExhausted):
        mc.guard("llm_provider", endpoint="b")(lambda: "ok")()


def test_past_the_cap_calls_go_by_the_service_breaker_and_are_counted() -> None:
    mc, clock = agent()
    for endpoint in ("a", "b", "c", "d"):
        mc.guard("llm_provider", endpoint=endpoint)(lambda: "ok")()
    assert sorted(mc.view.get("llm_provider").endpoints) == ["llm_provider/a", "llm_provider/b"]
    assert "llm_provider/c" not in mc.view.services
    service = mc.view.get("llm_provider").drain(clock())
    assert service is not None and service.endpoints_over_cap == 2 and service.successes == 2
    for name in ("llm_provider/a", "llm_provider/b"):  # their outcomes are reported first
        mc.view.get(name).drain(clock())
    clock.now += 9
    mc.guard("llm_provider", endpoint="a")(lambda: "ok")()
    mc.view.get("llm_provider/a").drain(clock())
    clock.now += 1  # b idle for 10 s, a for 1 s
    assert mc.view.forget_idle(clock()) == 1
    mc.guard("llm_provider", endpoint="c")(lambda: "ok")()
    assert sorted(mc.view.get("llm_provider").endpoints) == ["llm_provider/a", "llm_provider/c"]


def test_an_open_or_unreported_endpoint_is_not_forgotten() -> None:
    mc, clock = agent()
    with pytest.raises(Exception, match="down"):
        mc.guard("llm_provider", endpoint="a")(down)()
    clock.now += 60
    assert mc.view.forget_idle(clock()) == 0  # its failure is not reported yet
    mc.view.get("llm_provider/a").drain(clock())
    assert mc.view.forget_idle(clock()) == 1


def test_bad_endpoint_names_are_refused() -> None:
    mc, _ = agent()
    for bad in ("", "/x", "x//y", "x/", "a b", "x" * 129):
        with pytest.raises(ConfigurationError):
            mc.guard("llm_provider", endpoint=bad)
    assert breaker_name_problem("llm_provider/openai/gpt-4.1") is None
    assert breaker_name_problem("llm_provider//x") is not None
    with pytest.raises(ConfigurationError):
        ServicePolicy("s", max_endpoints=-1, endpoint_idle_secs=0)
