"""Retry strategies from a policy, composed from tenacity's objects.

The delay before retry *n* is the policy's exponential backoff with proportional jitter,
or the wait the failure itself asked for (``RetryInfo`` / ``grpc-retry-pushback-ms``),
whichever is longer. Retrying stops after ``max_retries``, before a wait that would pass
the call's deadline, or when the service's retry budget is spent.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    stop_after_attempt,
    stop_before_delay,
    wait_exception,
    wait_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .policy import Backoff

__all__ = ["policy_stop", "policy_wait"]


class _wait_max(wait_base):
    def __init__(self, *waits: wait_base) -> None:
        self.waits = waits

    def __call__(self, retry_state: RetryCallState) -> float:
        return max(w(retry_state) for w in self.waits)


class _wait_jittered(wait_base):
    """``wait`` plus up to ``fraction`` of it, at random."""

    def __init__(self, wait: wait_base, fraction: float, rand: Callable[[], float]) -> None:
        self.wait = wait
        self.fraction = fraction
        self.rand = rand

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self.wait(retry_state)
        return delay * (1.0 + self.fraction * self.rand())


class _stop_when_budget_spent(stop_base):
    """Stops when the retry budget has no retry left; otherwise spends one.

    Placed last in a ``stop_any``, so a retry is only spent when nothing else stops it.
    """

    def __init__(self, spend: Callable[[], bool]) -> None:
        self.spend = spend

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.spend()


def _asked_wait(error: BaseException) -> float:
    return float(getattr(error, "retry_after", None) or 0.0)


def policy_wait(backoff: Backoff, rand: Callable[[], float] = random.random) -> wait_base:
    exponential = wait_exponential(
        multiplier=backoff.initial_secs, exp_base=backoff.multiplier, max=backoff.max_secs
    )
    return _wait_max(_wait_jittered(exponential, backoff.jitter, rand), wait_exception(_asked_wait))


def policy_stop(max_retries: int, time_left: float, spend_retry: Callable[[], bool]) -> stop_base:
    """Attempts include the first call: ``max_retries`` retries means ``max_retries + 1``.
    ``spend_retry`` takes one retry from the budget, or says there is none left."""
    return (
        stop_after_attempt(max_retries + 1)
        | stop_before_delay(max(0.0, time_left))
        | _stop_when_budget_spent(spend_retry)
    )
