"""A hedge the hedge budget refuses for slowness does not stop the retry of the same call:
the slow attempt that then fails is retried if the retry budget allows (sync and async)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from mission_control.client import MissionControl, StorageFailure
from mission_control.client.hedge_delay import HedgeMeter
from mission_control.client.hedging import HedgeRun
from mission_control.client.policy import Hedging, RetryBudget, ServicePolicy

SERVICE = "storage_backend"
POLICY = ServicePolicy(
    service=SERVICE,
    timeout_secs=10,
    max_retries=0,
    failure_threshold=1000,
    hedging=Hedging(max_attempts=2, delay_secs=0.01, max_extra_ratio=0.1),
    retry_budget=RetryBudget(ratio=1, min_retries_per_second=100),
)


class SlowThenRefused:
    """The first attempt of each call waits until the hedge budget has refused a hedge for
    it, then fails (retryable); any later attempt answers. No timing is relied on."""

    def __init__(self, meter: HedgeMeter) -> None:
        self.refused = threading.Event()
        self.attempts = 0
        self.first = True
        self.lock = threading.Lock()
        spend = meter.spend

        def spend_and_tell(hedging: Hedging) -> bool:
            allowed = spend(hedging)
            if not allowed:
                self.refused.set()
            return allowed

        meter.spend = spend_and_tell  # type: ignore[method-assign]
        self.meter = meter

    def start_call(self) -> None:
        self.meter.budget.balance = 0.0  # an empty hedge budget: the hedge will be refused
        self.refused.clear()
        self.first = True

    def _take(self) -> tuple[int, bool]:
        with self.lock:
            self.attempts += 1
            first, self.first = self.first, False
            return self.attempts, first

    def save(self) -> str:
        n, first = self._take()
        if first:
            assert self.refused.wait(10), "the hedge was never asked for"
            raise ConnectionRefusedError("first attempt refused after being slow")
        return f"attempt {n}"

    async def save_async(self) -> str:
        n, first = self._take()
        if first:
            bound = time.monotonic() + 10
            while not self.refused.is_set():
                assert time.monotonic() < bound, "the hedge was never asked for"
                await asyncio.sleep(0.002)
            raise ConnectionRefusedError("first attempt refused after being slow")
        return f"attempt {n}"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_slow_attempt_that_fails_after_its_hedge_was_refused_is_retried(mode: str) -> None:
    mc = MissionControl("hedge-retry-agent", config={SERVICE: POLICY})
    backend = SlowThenRefused(mc.executor.hedge_meter(SERVICE))
    guard = mc.guard(SERVICE, idempotent=True)
    answers = []
    for _ in range(5):
        backend.start_call()
        if mode == "sync":
            answers.append(await asyncio.to_thread(guard(backend.save)))
        else:
            answers.append(await guard(backend.save_async)())
    assert answers == [f"attempt {2 * i + 2}" for i in range(5)]  # each call's retry answered
    tally = mc.view.get(SERVICE).tally
    assert (tally.failures, tally.successes) == (5, 5)


def test_without_retry_budget_the_slow_attempts_failure_ends_the_call() -> None:
    broke = POLICY.replace(retry_budget=RetryBudget(ratio=0, min_retries_per_second=0))
    mc = MissionControl("hedge-retry-agent", config={SERVICE: broke})
    backend = SlowThenRefused(mc.executor.hedge_meter(SERVICE))
    backend.start_call()
    with pytest.raises(StorageFailure, match="refused after being slow"):
        mc.guard(SERVICE, idempotent=True)(backend.save)()
    assert backend.attempts == 1


def test_a_call_whose_hedge_was_refused_ends_once_nothing_is_in_flight() -> None:
    """Its only attempt gone without an answer (cancelled): no hedge for slowness will come,
    so the call ends at once rather than waiting for its deadline."""
    mc = MissionControl("hedge-retry-agent", config={SERVICE: POLICY})
    ex = mc.executor
    run = HedgeRun(ex, SERVICE, "save", None, None, None, None, None, POLICY.hedging)
    ex.hedge_meter(SERVICE).budget.balance = 0.0
    now = ex.clock()
    first = run.due(now)
    assert first is not None
    assert run.due(now + 1.0) is None  # the hedge is refused by the empty hedge budget
    assert not run.finished(1)  # the first attempt may still answer, or fail and be retried
    run.cancelled(first)
    assert run.finished(0)
