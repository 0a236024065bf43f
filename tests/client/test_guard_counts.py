"""guard: what counts (the caller's own errors count as neither), late calls are not
duplicated, and the agent-facing API (breaker view, cost check, start, one ContextVar)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import Any

import pytest
from mission_control.client import MissionControl, current_deadline
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import (
    CircuitBreakerOpen,
    ConfigurationError,
    LLMProviderUnavailable,
    OperationTimeout,
    StorageFailure,
)
from mission_control.client.policy import Backoff, Quota, RetryBudget, ServicePolicy

MODES = ["decorator", "async-decorator", "with", "async-with"]

POLICY = ServicePolicy(
    service="storage_backend",
    timeout_secs=2,
    max_retries=2,
    failure_threshold=1,
    success_threshold=2,
    wait_duration_secs=0.2,
    backoff=Backoff(initial_secs=0.01, jitter=0),
    retry_budget=RetryBudget(ratio=10, min_retries_per_second=100),
)


def agent(policy: ServicePolicy = POLICY) -> MissionControl:
    return MissionControl("counts-agent", config={policy.service: policy})


async def through(mode: str, mc: MissionControl, body: Callable[[], Any], **guard: Any) -> Any:
    """Run ``body`` under ``mc.guard("storage_backend")`` in one of the four ways."""
    g = mc.guard("storage_backend", operation="op", **guard)
    if mode == "decorator":
        return await asyncio.to_thread(g(body))
    if mode == "async-decorator":

        async def run() -> Any:
            return body()

        return await g(run)()
    if mode == "with":

        def block() -> Any:
            with g:
                return body()

        return await asyncio.to_thread(block)
    async with g:
        return body()


def raising(exc: BaseException) -> Callable[[], Any]:
    def body() -> Any:
        raise exc

    return body


def wait_for(mc: MissionControl, state: BreakerState) -> None:
    end = time.monotonic() + 5
    while mc.breaker("storage_backend").state is not state and time.monotonic() < end:
        time.sleep(0.01)
    assert mc.breaker("storage_backend").state is state


@pytest.mark.parametrize("mode", MODES)
async def test_a_file_not_found_is_the_callers_not_an_outage(mode: str) -> None:
    mc = agent()
    for _ in range(3):
        with pytest.raises(FileNotFoundError):  # unchanged, not StorageFailure
            await through(mode, mc, raising(FileNotFoundError("notes.db")))
    assert mc.breaker("storage_backend").state is BreakerState.CLOSED
    tally = mc.view.get("storage_backend").tally
    assert (tally.failures, tally.successes) == (0, 0)  # neither


@pytest.mark.parametrize("mode", MODES)
async def test_the_callers_error_is_no_probe_success(mode: str) -> None:
    mc = agent()
    with pytest.raises(StorageFailure):
        await through(mode, mc, raising(ConnectionResetError("down")))
    wait_for(mc, BreakerState.HALF_OPEN)
    for _ in range(3):  # more than success_threshold: each permit came back unused
        with pytest.raises(ValueError):
            await through(mode, mc, raising(ValueError("bad input")))
    assert mc.breaker("storage_backend").state is BreakerState.HALF_OPEN
    for _ in range(2):
        assert await through(mode, mc, lambda: "ok") == "ok"
    assert mc.breaker("storage_backend").state is BreakerState.CLOSED


@pytest.mark.parametrize("mode", MODES)
async def test_ignore_and_record_lists(mode: str) -> None:
    mc = agent()
    with pytest.raises(ConnectionResetError):
        await through(mode, mc, raising(ConnectionResetError("mine")), ignore=(ConnectionResetError,))
    assert mc.breaker("storage_backend").state is BreakerState.CLOSED
    with pytest.raises(KeyError):
        await through(mode, mc, raising(KeyError("missing row")), record=(KeyError,))
    assert mc.breaker("storage_backend").state is BreakerState.OPEN


def test_a_late_write_is_not_done_again_by_the_fallback() -> None:
    p = POLICY.replace(
        service="llm_provider", timeout_secs=0.2, fallbacks=("llm_backup",), failure_threshold=5
    )
    mc = MissionControl("late-agent", config={"llm_provider": p})
    done: list[str] = []

    def backup() -> str:
        done.append("backup")
        return "backup"

    def primary() -> str:
        left = current_deadline()
        assert left is not None and 0 < left <= 0.2  # visible, so a function can stop in time
        time.sleep(0.3)
        done.append("primary")
        return "primary"

    with pytest.raises(OperationTimeout):
        mc.guard("llm_provider", fallbacks={"llm_backup": backup})(primary)()
    assert done == ["primary"]  # not retried, not sent to the backup: it ran
    done.clear()
    assert mc.guard("llm_provider", fallbacks={"llm_backup": backup}, idempotent=True)(primary)() == "backup"
    assert done == ["primary", "backup"]


def test_the_user_text_says_the_backups_failed_too() -> None:
    p = POLICY.replace(service="llm_provider", fallbacks=("llm_backup",), max_retries=0, failure_threshold=5)
    mc = MissionControl("text-agent", config={"llm_provider": p})
    with pytest.raises(LLMProviderUnavailable) as caught:
        mc.guard("llm_provider", fallbacks={"llm_backup": raising(ConnectionResetError())})(
            raising(ConnectionResetError())
        )()
    assert caught.value.user_friendly_display().endswith("and so are its backup models.")


def test_one_context_variable_for_every_guard() -> None:
    mc = agent(POLICY.replace(rate_limit_requests=100_000))
    before = len(contextvars.copy_context())
    for _ in range(2000):
        with mc.guard("storage_backend"):
            pass
    assert len(contextvars.copy_context()) <= before + 2  # the open blocks and the deadline


def test_cost_in_an_unknown_resource_is_an_error() -> None:
    p = POLICY.replace(quotas=(Quota("llm_tokens", 1000, 60),))
    mc = agent(p)
    with pytest.raises(ConfigurationError) as caught:
        mc.guard("storage_backend", cost={"llm_tokenz": 10})
    assert caught.value.field == "cost" and "llm_tokenz" in caught.value.message
    mc.guard("storage_backend", cost={"llm_tokens": 10})  # a known one is fine


def test_forgetting_start_is_loud() -> None:
    mc = MissionControl("forgetful", control_plane="127.0.0.1:1", telemetry=False)
    with pytest.raises(RuntimeError, match="start"):
        mc.guard("storage_backend")(lambda: None)()
    mc.start()
    try:
        mc.guard("storage_backend")(lambda: None)()
    finally:
        mc.close()


def test_the_breaker_view() -> None:
    mc = agent(POLICY.replace(wait_duration_secs=30))
    view = mc.breaker("storage_backend")
    assert (view.state, view.source, view.failures, view.open_remaining) == (
        BreakerState.CLOSED,
        "local",
        0,
        0,
    )
    with pytest.raises(StorageFailure):
        mc.guard("storage_backend")(raising(ConnectionResetError()))()
    view = mc.breaker("storage_backend")
    assert view.state is BreakerState.OPEN and view.failures == 1 and 29 < view.open_remaining <= 30
    with pytest.raises(CircuitBreakerOpen):
        mc.guard("storage_backend")(lambda: None)()


@pytest.mark.parametrize("mode", MODES)
async def test_the_policy_names_what_counts(mode: str) -> None:
    p = POLICY.replace(record_errors=("FileNotFoundError",), ignore_errors=("builtins.ConnectionResetError",))
    mc = agent(p)
    with pytest.raises(ConnectionResetError):  # the policy says: the caller's own
        await through(mode, mc, raising(ConnectionResetError("mine")))
    assert mc.breaker("storage_backend").state is BreakerState.CLOSED
    with pytest.raises(FileNotFoundError):  # the policy says: the service failed
        await through(mode, mc, raising(FileNotFoundError("mounted volume gone")))
    assert mc.breaker("storage_backend").state is BreakerState.OPEN


def test_a_policy_can_say_calls_are_idempotent() -> None:
    p = POLICY.replace(
        service="llm_provider",
        timeout_secs=0.2,
        fallbacks=("llm_backup",),
        failure_threshold=5,
        idempotent=True,
    )
    mc = MissionControl("idem-agent", config={"llm_provider": p})

    def late() -> str:
        time.sleep(0.3)
        return "late"

    assert mc.guard("llm_provider", fallbacks={"llm_backup": lambda: "backup"})(late)() == "backup"


def test_the_new_policy_fields_survive_proto_json_and_toml() -> None:
    from mission_control.client.config import (
        ErrorHandlingConfig,
        config_to_toml,
        load_config,
        policy_from_json,
        policy_from_proto,
        policy_to_json,
        policy_to_proto,
    )

    p = POLICY.replace(idempotent=True, record_errors=("KeyError",), ignore_errors=("pkg.mod.Mine",))
    assert policy_from_proto(policy_to_proto(p)) == p
    assert policy_from_json(policy_to_json(p)) == p
    import tomllib

    toml = config_to_toml(ErrorHandlingConfig(service_specific={p.service: p}))
    assert load_config(tomllib.loads(toml)).policy_for(p.service) == p
    with pytest.raises(ConfigurationError):
        POLICY.replace(record_errors=("not a class!",))
