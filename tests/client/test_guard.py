"""guard around plain Python code (no gRPC): decorator and context manager, sync and async."""

from __future__ import annotations

import asyncio
import time

import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import (
    CircuitBreakerOpen,
    OperationTimeout,
    StorageFailure,
)
from mission_control.client.executor import current_deadline
from mission_control.client.policy import Backoff, RetryBudget, ServicePolicy

POLICY = ServicePolicy(
    service="storage_backend",
    timeout_secs=0.5,
    max_retries=2,
    failure_threshold=3,
    wait_duration_secs=30,
    backoff=Backoff(initial_secs=0.01, jitter=0),
    retry_budget=RetryBudget(ratio=10, min_retries_per_second=100),
)


@pytest.fixture
def mc() -> MissionControl:
    return MissionControl("doc-agent", config={"storage_backend": POLICY})


def test_plain_function_is_retried_and_classified(mc: MissionControl) -> None:
    attempts = []

    @mc.guard("storage_backend")
    def write(row: str) -> str:
        attempts.append(row)
        if len(attempts) < 3:
            raise ConnectionResetError("duckdb went away")
        return f"stored {row}"

    assert write("r1") == "stored r1"
    assert attempts == ["r1", "r1", "r1"]

    @mc.guard("storage_backend", operation="flush")
    def broken() -> None:
        raise ConnectionRefusedError("no server")

    with pytest.raises(StorageFailure) as caught:
        broken()
    assert (caught.value.backend, caught.value.operation) == ("storage_backend", "flush")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert caught.value.context is not None and caught.value.context.agent == "doc-agent"
    # 2 + 3 failed attempts: the local breaker is open now
    with pytest.raises(CircuitBreakerOpen):
        broken()


def test_caller_errors_pass_unchanged_and_are_not_outages(mc: MissionControl) -> None:
    @mc.guard("storage_backend")
    def bad() -> None:
        raise ValueError("bad SQL")

    for _ in range(5):
        with pytest.raises(ValueError):
            bad()
    assert mc.view.get("storage_backend").tally.failures == 0


async def test_async_function_is_cancelled_at_the_deadline(mc: MissionControl) -> None:
    @mc.guard("storage_backend")
    async def slow() -> None:
        await asyncio.sleep(5)

    started = time.monotonic()
    with pytest.raises(OperationTimeout) as caught:
        await slow()
    assert time.monotonic() - started < 4  # cancelled, not awaited to the end
    assert caught.value.timeout_secs == 0.5


def test_sync_function_sees_its_deadline_and_a_late_result_is_a_timeout(
    mc: MissionControl,
) -> None:
    seen = []

    @mc.guard("storage_backend", timeout=0.2)
    def slow() -> str:
        seen.append(current_deadline())
        time.sleep(0.3)
        return "late"

    with pytest.raises(OperationTimeout):
        slow()
    assert seen[0] is not None and 0 < seen[0] <= 0.2


def test_context_manager_one_attempt(mc: MissionControl) -> None:
    with mc.guard("storage_backend", operation="scan"):
        pass
    with pytest.raises(StorageFailure) as caught, mc.guard("storage_backend", operation="scan"):
        raise ConnectionResetError("reset")
    assert caught.value.operation == "scan"
    tally = mc.view.get("storage_backend").tally
    assert (tally.successes, tally.failures) == (1, 1)


async def test_async_context_manager_enforces_the_deadline(mc: MissionControl) -> None:
    with pytest.raises(OperationTimeout):
        async with mc.guard("storage_backend", timeout=0.1):
            await asyncio.sleep(2)
    async with mc.guard("storage_backend"):
        await asyncio.sleep(0)
    tally = mc.view.get("storage_backend").tally
    assert (tally.successes, tally.failures) == (1, 1)


async def test_async_fallback(mc: MissionControl) -> None:
    primary = POLICY.replace(service="llm_provider", fallbacks=("llm_backup",), max_retries=0)
    mc = MissionControl("a", config={"llm_provider": primary})

    async def backup(prompt: str) -> str:
        return f"backup says {prompt}"

    @mc.guard("llm_provider", fallbacks={"llm_backup": backup})
    async def generate(prompt: str) -> str:
        raise ConnectionResetError("primary down")

    assert await generate("hi") == "backup says hi"
