"""What counts as a failure, what is retried, and that every attempt takes its unit and
its cost — through the four call paths (sync and aio interceptors, sync and async guard)
against a real upstream."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from mission_control.client.errors import CircuitBreakerOpen, LLMProviderUnavailable, ResourceExhausted
from mission_control.client.outcomes import Outcomes
from mission_control.client.policy import Quota

from tests.interceptors.conftest import policy
from tests.support.drivers import Driver
from tests.support.upstream import Upstream


@pytest.mark.parametrize("code", ["NOT_FOUND", "INVALID_ARGUMENT"])
async def test_the_callers_error_passes_unchanged_and_opens_nothing(
    make: Callable[..., Driver], upstream: Upstream, code: str
) -> None:
    upstream.set("fail", code=code)
    driver = make(policy(failure_threshold=2, max_retries=3))
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as caught:
            await driver.echo()
        assert caught.value.code() == grpc.StatusCode[code]
    assert upstream.calls == 5  # not retried, and the breaker never opened
    assert driver.mc.breaker("llm_provider").state.name == "CLOSED"


async def test_a_retry_takes_its_rate_limit_unit(make: Callable[..., Driver], upstream: Upstream) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    driver = make(policy(max_retries=3, rate_limit_requests=2, rate_limit_window_secs=60))
    with pytest.raises(ResourceExhausted) as caught:
        await driver.echo()
    assert caught.value.resource == "llm_provider.requests"
    assert upstream.calls == 2  # the third attempt would have waited 30 s, past the deadline


async def test_a_retry_waits_for_its_unit_within_the_deadline(
    make: Callable[..., Driver], upstream: Upstream
) -> None:
    upstream.set("fail", code="UNAVAILABLE", times=2)
    driver = make(policy(max_retries=3, rate_limit_requests=2, rate_limit_window_secs=2))
    assert (await driver.echo("late")).text == "late"
    first, _, third = upstream.servicer.arrivals
    # 2 units in 2 s: a third unit exists about 1 s after the first was taken; backoff alone
    # would have sent the third attempt 0.15 s after the first. Arrivals are compared, and a
    # busy machine can deliver the first attempt late: the margin leaves it 0.3 s.
    assert third - first >= 0.7


@pytest.mark.parametrize("value", ["-1", "NaN", "soon"])
async def test_pushback_that_is_not_a_wait_means_do_not_retry(
    make: Callable[..., Driver], upstream: Upstream, value: str
) -> None:
    upstream.set("pushback", code="UNAVAILABLE", text=value)
    driver = make(policy(max_retries=3))
    with pytest.raises(LLMProviderUnavailable):
        await driver.echo()
    assert upstream.calls == 1


async def test_a_classify_hook_decides_what_counts(make: Callable[..., Driver], upstream: Upstream) -> None:
    upstream.set("fail", code="UNAVAILABLE")
    ignored = Outcomes(classify=lambda exc: "neither")
    driver = make(policy(failure_threshold=2, max_retries=0), outcomes=ignored)
    for _ in range(4):
        with pytest.raises(grpc.RpcError):  # the caller's own, by its word: unchanged
            await driver.echo()
    assert upstream.calls == 4
    assert driver.mc.view.get("llm_provider").tally.failures == 0


async def test_record_makes_an_answer_a_failure(make: Callable[..., Driver], upstream: Upstream) -> None:
    upstream.set("fail", code="NOT_FOUND")
    driver = make(policy(failure_threshold=2, max_retries=0), outcomes=Outcomes(record=(grpc.RpcError,)))
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            await driver.echo()
    with pytest.raises(CircuitBreakerOpen):
        await driver.echo()
    assert upstream.calls == 2


@pytest.mark.parametrize("guard_kind", ["sync-guard", "async-guard"])
async def test_every_attempt_takes_its_cost(guard_kind: str, upstream: Upstream) -> None:
    from mission_control.client.agent import MissionControl

    upstream.set("fail", code="UNAVAILABLE")
    p = policy(max_retries=3, quotas=(Quota("llm_tokens", 2000, 60),))
    mc = MissionControl("test-agent", config={p.service: p})
    driver = Driver(guard_kind, mc, upstream.address, p.service, cost={"llm_tokens": 800})
    try:
        with pytest.raises(ResourceExhausted) as caught:
            await driver.echo()
        assert caught.value.resource == "llm_tokens"
        assert upstream.calls == 2  # 2 × 800 of 2000 tokens; a third attempt has none
    finally:
        await driver.close()
