"""Fixtures for running one case through every call path against a real upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.policy import Backoff, RetryBudget, ServicePolicy

from tests.support.channels import PATHS
from tests.support.drivers import KINDS, Driver
from tests.support.upstream import Upstream

GENEROUS_BUDGET = RetryBudget(ratio=10, min_retries_per_second=100, window_secs=10)


def policy(service: str = "llm_provider", **changes: object) -> ServicePolicy:
    """A quick policy: 5 s timeout, 3 retries 50 ms apart and growing, a breaker that
    does not trip unless a test says so."""
    base = ServicePolicy(
        service=service,
        timeout_secs=5,
        max_retries=3,
        failure_threshold=1000,
        backoff=Backoff(initial_secs=0.05, multiplier=2, max_secs=1, jitter=0),
        retry_budget=GENEROUS_BUDGET,
    )
    return base.replace(**changes)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream("primary") as up:
        yield up


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    """How the protected channel is built: grpc's interceptors, or our channel."""
    return str(request.param)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make(kind: str, upstream: Upstream) -> AsyncIterator[Callable[..., Driver]]:
    """``make(policy, ...)`` -> a Driver of this test's kind on a fresh agent."""
    drivers: list[Driver] = []

    def build(*policies: ServicePolicy, address: str | None = None, **kw: object) -> Driver:
        mc = MissionControl("test-agent", config={p.service: p for p in policies})
        driver = Driver(kind, mc, address or upstream.address, policies[0].service, **kw)  # type: ignore[arg-type]
        drivers.append(driver)
        return driver

    yield build
    for driver in drivers:
        await driver.close()
