"""The adaptive hedge delay and the hedge budget (The Tail at Scale; Finagle's backup
requests; Polly's dynamic hedging delay).

A policy's ``hedging.delay_percentile`` hedges a call once it has waited longer than that
percentile of the service's recent successful attempts: :class:`LatencyTracker` keeps
them in a histogram of log-spaced buckets over the last ``window_secs`` (O(1) a record;
the percentile is worked out again after every :data:`REFRESH` records or when the
window moves). Until the window holds enough samples for the percentile the fixed
``delay_secs`` is used; ``min_delay_secs`` is a floor either way.

``hedging.max_extra_ratio`` is the hedge budget: every call adds that share of a hedge to
:class:`HedgeBudget` and each hedge takes a whole one, so the hedges of a service never
outnumber ``max_extra_ratio`` × its calls + :data:`HEDGE_START` (the balance starts at
that small allowance, so a fresh agent can hedge its first slow calls, and is capped at
:data:`HEDGE_BURST`, the most a quiet period saves up). Only hedges sent for a slow
answer spend it: an attempt after a failure is a retry and spends the retry budget.

:class:`HedgeMeter` holds both for one service in one agent, behind a lock of its own
(short sections; never held across a call).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from .policy import Hedging

__all__ = ["HEDGE_BURST", "HEDGE_START", "REFRESH", "HedgeBudget", "HedgeMeter", "LatencyTracker"]

#: The smallest latency the histogram tells apart, and the growth from a bucket to the next.
_LOW_SECS = 0.0005
_GROWTH = 1.05
_BUCKETS = 256  # 0.5 ms × 1.05^256 ≈ 135 s: slower ones share the last bucket
#: Records between two computations of a percentile.
REFRESH = 16
#: Fewest samples a percentile needs, whatever it is.
MIN_SAMPLES = 20
#: The most hedges a hedge budget saves up.
HEDGE_BURST = 10.0
#: The hedges a fresh hedge budget holds: a new agent's first slow calls can be hedged.
HEDGE_START = 2.0


def _bucket(secs: float) -> int:
    if secs <= _LOW_SECS:
        return 0
    return min(_BUCKETS - 1, int(math.log(secs / _LOW_SECS) / math.log(_GROWTH)))


def _upper(bucket: int) -> float:
    """The top of a bucket: a percentile read from it errs late by at most 5 %."""
    return _LOW_SECS * _GROWTH ** (bucket + 1)


def samples_needed(percentile: float) -> int:
    """Samples a percentile needs: :data:`MIN_SAMPLES`, and two beyond it."""
    return max(MIN_SAMPLES, math.ceil(2 * 100 / (100 - percentile)))


class LatencyTracker:
    """Latencies of the last ``window_secs`` (between half of it and all of it: the
    window is two halves, the older dropped as a new one starts). Not thread-safe."""

    def __init__(self, clock: Callable[[], float], window_secs: float = 10.0) -> None:
        self.clock = clock
        self.half = window_secs / 2
        self._start = clock()
        self._older = [0] * _BUCKETS
        self._newer = [0] * _BUCKETS
        self._older_count = 0
        self._newer_count = 0
        self._cached: tuple[float, float | None] | None = None  # (percentile, value)
        self._since = 0  # records since the cached value

    @property
    def samples(self) -> int:
        self._roll()
        return self._older_count + self._newer_count

    def record(self, secs: float) -> None:
        """One successful attempt's latency, in seconds."""
        self._roll()
        self._newer[_bucket(max(0.0, secs))] += 1
        self._newer_count += 1
        self._since += 1

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0 < p < 100) of the window, in seconds (the top of its
        bucket); None while the window holds fewer than :func:`samples_needed`."""
        self._roll()
        cached = self._cached
        if cached is not None and cached[0] == p and cached[1] is not None and self._since < REFRESH:
            return cached[1]
        value = self._compute(p)
        self._cached, self._since = (p, value), 0
        return value

    def _compute(self, p: float) -> float | None:
        total = self._older_count + self._newer_count
        if total < samples_needed(p):
            return None
        rank = math.ceil(p / 100 * total)
        seen = 0
        for i in range(_BUCKETS):
            seen += self._older[i] + self._newer[i]
            if seen >= rank:
                return _upper(i)
        return _upper(_BUCKETS - 1)

    def _roll(self) -> None:
        halves = int((self.clock() - self._start) / self.half)
        if halves <= 0:
            return
        if halves == 1:
            self._older, self._older_count = self._newer, self._newer_count
        else:
            self._older, self._older_count = [0] * _BUCKETS, 0
        self._newer, self._newer_count = [0] * _BUCKETS, 0
        self._start += halves * self.half
        self._cached = None


class HedgeBudget:
    """Hedges ≤ ``ratio`` × calls + :data:`HEDGE_START`: each call adds ``ratio``, each
    hedge takes 1. Pure."""

    def __init__(self) -> None:
        self.balance = HEDGE_START

    def call(self, ratio: float) -> None:
        self.balance = min(HEDGE_BURST, self.balance + ratio)

    def try_spend(self) -> bool:
        if self.balance < 1.0:
            return False
        self.balance -= 1.0
        return True

    def refund(self) -> None:
        self.balance = min(HEDGE_BURST, self.balance + 1.0)


class HedgeMeter:
    """One service's latencies and hedge budget in one agent; thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.latencies = LatencyTracker(clock)
        self.budget = HedgeBudget()

    def delay(self, hedging: Hedging) -> float:
        """How long a call waits for an answer before its next attempt goes."""
        delay = hedging.delay_secs
        if hedging.delay_percentile:
            with self.lock:
                seen = self.latencies.percentile(hedging.delay_percentile)
            delay = delay if seen is None else seen
        return max(hedging.min_delay_secs, delay)

    def succeeded(self, secs: float) -> None:
        with self.lock:
            self.latencies.record(secs)

    def called(self, hedging: Hedging) -> None:
        """A call's first attempt went: the budget grows by its share of a hedge."""
        if hedging.max_extra_ratio:
            with self.lock:
                self.budget.call(hedging.max_extra_ratio)

    def spend(self, hedging: Hedging) -> bool:
        """One hedge from the budget (always True without one)."""
        if not hedging.max_extra_ratio:
            return True
        with self.lock:
            return self.budget.try_spend()
