"""What the agent side enforces against real upstream servers, through all four paths:
sync and aio interceptors, sync and async guard."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import (
    CircuitBreakerOpen,
    LLMProviderUnavailable,
    OperationTimeout,
    ResourceExhausted,
    StorageFailure,
)
from mission_control.client.policy import Backoff, Quota, RetryBudget

from tests.interceptors.conftest import policy
from tests.support.drivers import Driver
from tests.support.upstream import Upstream


async def test_retries_with_policy_count_and_growing_delays(make, upstream: Upstream) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    driver = make(policy(max_retries=3))
    with pytest.raises(LLMProviderUnavailable) as caught:
        await driver.echo()
    assert caught.value.provider == "llm_provider"
    arrivals = upstream.servicer.arrivals
    assert len(arrivals) == 4  # first call + max_retries
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # each wait is at least its exponential floor; how much longer depends on the machine's
    # load, so the order of the gaps themselves is not asserted (a busy machine stretched one
    # 0.1 s wait to 0.6 s)
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2


async def test_transient_failures_are_recovered(make, upstream: Upstream) -> None:
    upstream.set("fail", code="UNAVAILABLE", times=2)
    driver = make(policy())
    response = await driver.echo("again")
    assert response.text == "again" and upstream.calls == 3
    tally = driver.mc.view.get("llm_provider").tally
    assert (tally.recovery_attempts, tally.recovery_successes) == (1, 1)
    assert (tally.failures, tally.successes) == (2, 1)


async def test_non_retryable_codes_are_not_retried(make, upstream: Upstream) -> None:
    upstream.set("fail", code="INVALID_ARGUMENT")
    driver = make(policy())
    with pytest.raises(grpc.RpcError) as caught:
        await driver.echo()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert upstream.calls == 1
    tally = driver.mc.view.get("llm_provider").tally
    assert tally.failures == 0 and tally.successes == 1  # the service answered: no outage


async def test_taxonomy_from_upstream_passes_through(make, upstream: Upstream) -> None:
    upstream.set("taxonomy", text="StorageFailure")
    driver = make(policy("storage_backend"))
    with pytest.raises(StorageFailure) as caught:
        await driver.echo()
    assert (caught.value.backend, caught.value.operation, caught.value.details) == (
        "duckdb",
        "write",
        "disk full",
    )
    assert upstream.calls == 4  # UNAVAILABLE: retried as the policy says


async def test_deadline_holds(make, upstream: Upstream) -> None:
    upstream.set("slow", delay_secs=3)
    driver = make(policy(timeout_secs=0.3))
    with pytest.raises(OperationTimeout) as caught:
        await driver.echo()
    assert caught.value.timeout_secs == pytest.approx(0.3)
    assert caught.value.operation == "Echo"
    assert upstream.calls == 1


async def test_rate_limit_raises_resource_exhausted(make, upstream: Upstream) -> None:
    driver = make(policy(rate_limit_requests=3, rate_limit_window_secs=60))
    for _ in range(3):
        await driver.echo()
    with pytest.raises(ResourceExhausted) as caught:
        await driver.echo()
    error = caught.value
    assert (error.resource, error.current, error.limit) == ("llm_provider.requests", 3, 3)
    assert error.retry_after is not None and 19 < error.retry_after <= 20
    assert upstream.calls == 3


async def test_bulkhead_rejects_the_call_over_the_limit(make, upstream: Upstream) -> None:
    upstream.set("slow", delay_secs=0.6)
    driver = make(policy(max_concurrent=2))
    results = await asyncio.gather(*(driver.echo() for _ in range(3)), return_exceptions=True)
    rejected = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(rejected) == 1
    assert (rejected[0].resource, rejected[0].current, rejected[0].limit) == (
        "llm_provider.concurrency",
        2,
        2,
    )
    assert upstream.calls == 2


async def test_local_breaker_fails_fast_without_the_network(make, upstream: Upstream) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    driver = make(policy(failure_threshold=3, max_retries=0, wait_duration_secs=30))
    for _ in range(3):
        with pytest.raises(LLMProviderUnavailable):
            await driver.echo()
    with pytest.raises(CircuitBreakerOpen) as caught:
        await driver.echo()
    assert caught.value.failures == 3 and caught.value.retry_after is not None
    assert 29 < caught.value.retry_after <= 30
    assert upstream.calls == 3


async def test_pushback_is_honoured(make, upstream: Upstream) -> None:
    upstream.set("pushback", code="UNAVAILABLE", pushback_ms=400, times=1)
    driver = make(policy())
    await driver.echo()
    first, second = upstream.servicer.arrivals
    assert second - first >= 0.4


async def test_fallback_serves_when_the_breaker_is_open(make, upstream: Upstream) -> None:
    with Upstream("backup") as backup:
        upstream.set("fail", code="UNAVAILABLE")
        driver = make(
            policy(failure_threshold=2, max_retries=0, fallbacks=("llm_backup",)),
            policy("llm_backup"),
            fallbacks={"llm_backup": backup.address},
        )
        served = [(await driver.echo(f"q{i}")).served_by for i in range(4)]
    # the first two fail over after the primary failed; then the breaker is open and the
    # primary is not even tried
    assert served == ["backup"] * 4
    assert upstream.calls == 2 and backup.calls == 4
    tally = driver.mc.view.get("llm_provider").tally
    assert tally.recovery_successes == 4 and tally.rejected == 2


async def test_retry_budget_bounds_amplification(make, upstream: Upstream) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.5, window_secs=10)
    driver = make(policy(max_retries=3, retry_budget=budget, backoff=Backoff(0.001, 0.001, 1, 0)))
    calls = 50
    for _ in range(calls):
        with pytest.raises(LLMProviderUnavailable):
            await driver.echo()
    # without a budget: 200 upstream calls; with it: 50 + 20% + 5 always-allowed
    assert calls < upstream.calls <= calls + 0.2 * calls + 5


@pytest.mark.parametrize("guard_kind", ["sync-guard", "async-guard"])
async def test_weighted_quota(guard_kind: str, upstream: Upstream) -> None:
    kind = guard_kind  # a call's cost is given to guard
    p = policy(quotas=(Quota("llm_tokens", 1000, 60),))
    mc = MissionControl("test-agent", config={p.service: p})
    driver = Driver(kind, mc, upstream.address, p.service, cost={"llm_tokens": 400})
    try:
        started = time.monotonic()
        await driver.echo()
        await driver.echo()
        with pytest.raises(ResourceExhausted) as caught:
            await driver.echo()
        elapsed = time.monotonic() - started
        assert (caught.value.resource, caught.value.limit) == ("llm_tokens", 1000)
        # 800 spent, less what the bucket refilled meanwhile (1000 per 60 s; a loaded machine
        # takes a few hundredths of a second over these calls)
        assert 800 - 1000 / 60 * elapsed - 1 <= caught.value.current <= 800
        assert upstream.calls == 2
    finally:
        await driver.close()
