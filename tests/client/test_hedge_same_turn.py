"""An async hedged call whose attempts end in the same event-loop turn, one failing with an
error that is not retried and one succeeding: the caller gets the good answer, every time
(the order of asyncio's set of finished tasks is arbitrary)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mission_control.client import MissionControl
from mission_control.client.policy import Hedging, RetryBudget, ServicePolicy

POLICY = ServicePolicy(
    "storage_backend",
    timeout_secs=10,
    max_retries=0,
    failure_threshold=10**6,
    idempotent=True,
    hedging=Hedging(max_attempts=2, delay_secs=0.0),
    retry_budget=RetryBudget(ratio=1, min_retries_per_second=10**6),
    rate_limit_requests=10**9,
)


def tied_attempts() -> Callable[[], Awaitable[str]]:
    """A call whose two attempts both wake in one turn: the first fails, the second succeeds."""
    both_started = asyncio.Event()
    started = 0

    async def save() -> str:
        nonlocal started
        mine = started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()
        if mine == 0:
            raise TimeoutError("attempt 0 timed out")  # not retried
        return "good"

    return save


async def test_a_success_in_the_same_turn_as_a_failure_wins() -> None:
    mc = MissionControl("same-turn", config={"storage_backend": POLICY})
    answers = [await mc.guard("storage_backend")(tied_attempts())() for _ in range(60)]
    assert answers == ["good"] * 60
