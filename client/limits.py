"""Local limits, pure and clock-injected: token buckets, the bulkhead, the retry budget.

None of them waits: each answers at once whether a call may go, and if not, when it
could. Callers pass ``now`` (``time.monotonic()``) and, where threads share a limit, hold
one lock around all of a call's limits (the executor holds its service's lock).
"""

from __future__ import annotations

__all__ = ["Bulkhead", "RetryBudget", "TokenBucket"]


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity / window`` per second.

    The seed's "100 requests per 60 s" is ``TokenBucket(100, 60)``: a burst of up to 100,
    then one call every 0.6 s on average. A weighted call (e.g. LLM tokens) takes ``cost``.
    """

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, capacity: float, window_secs: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = self.capacity / window_secs
        self._tokens = self.capacity
        self._stamp = now

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` tokens; returns 0.0 when taken, else seconds until they would be."""
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self._stamp = now
        if tokens >= cost:
            self._tokens = tokens - cost
            return 0.0
        self._tokens = tokens
        if cost > self.capacity:
            return float("inf")
        return (cost - tokens) / self.rate

    def give_back(self, cost: float) -> None:
        """Return tokens taken for a call that did not go after all."""
        self._tokens = min(self.capacity, self._tokens + cost)

    def used(self, now: float) -> int:
        """Tokens in use (capacity minus what is available now), for error reports."""
        tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        return round(self.capacity - tokens)

    def resize(self, capacity: float, window_secs: float, now: float) -> None:
        """Apply a new limit, keeping the share of tokens used."""
        tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        share = tokens / self.capacity if self.capacity else 1.0
        self.capacity = float(capacity)
        self.rate = self.capacity / window_secs
        self._tokens = share * self.capacity
        self._stamp = now


class Bulkhead:
    """At most ``limit`` calls in flight (0 = no limit). Never queues: a full bulkhead
    rejects at once."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        if self.limit and self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


#: The retry budget's health score: at most this ...
HEALTH_FULL = 10
#: ... and the floor is allowed while it is at least this (more than half, by a whole
#: point: time gives a fraction back between two calls, which must not buy a retry).
HEALTH_FLOOR = 6
#: What a successful attempt gives back to the score (a failed one takes 1).
SUCCESS_GAIN = 0.1
#: Seconds for time alone to bring the score from 0 back to full (half a point a minute:
#: less than one failed first attempt of a caller of one call a minute, so an outage or a
#: flap at that rate still drains it).
RECOVERY_SECS = 1200.0


class RetryBudget:
    """Retries may be at most ``ratio`` × calls over the last ``window_secs``, plus a floor
    of ``min_per_second`` × window while the service is healthy — so an outage cannot
    multiply the load on a failing service by the retry count (the idea of gRPC's
    retryThrottling).

    Healthy: a score starts at :data:`HEALTH_FULL` and loses one for each failed attempt,
    a call's first as any retry; it comes back with time (:data:`RECOVERY_SECS` from 0 to
    full) and by :data:`SUCCESS_GAIN` for each success (never above full nor below 0); the
    floor holds while it is above half. A quiet service keeps its floor (a lone failing
    call is retried, and time makes the score whole again within minutes), but in a full
    outage the floor ends after a few failures, and so it does while the service flaps: a
    retry that succeeds does not make up for the attempt that failed before it (with one
    point back per success, a service failing every other attempt kept its floor, and a
    caller of one call a second retried every call: 2.0x its calls).
    """

    __slots__ = ("_at", "_buckets", "health", "min_per_second", "ratio", "window")

    def __init__(self, ratio: float, min_per_second: float, window_secs: float) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window_secs
        self.health = float(HEALTH_FULL)
        self._at = 0.0  # when ``health`` was last brought up to date
        self._buckets: dict[int, list[int]] = {}  # second -> [calls, retries]

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = [0, 0]
            horizon = second - self.window
            for old in [s for s in self._buckets if s <= horizon]:
                del self._buckets[old]
        return bucket

    def record_call(self, now: float) -> None:
        bucket = self._buckets.get(int(now))  # this second's, on every call: looked up inline
        if bucket is None:
            bucket = self._bucket(now)
        bucket[0] += 1

    def _recovered(self, now: float) -> float:
        """The score at ``now``, with what the time since it was last changed gave back."""
        if self.health < HEALTH_FULL and now > self._at:
            self.health = min(
                float(HEALTH_FULL), self.health + (now - self._at) * HEALTH_FULL / RECOVERY_SECS
            )
        self._at = max(self._at, now)
        return self.health

    def succeeded(self, now: float) -> None:
        """An attempt of the service succeeded (at ``now``)."""
        if self.health < HEALTH_FULL:
            self.health = min(float(HEALTH_FULL), self._recovered(now) + SUCCESS_GAIN)

    def failed(self, now: float) -> None:
        """An attempt of the service failed (at ``now``): a call's first as a retry."""
        self.health = max(0.0, self._recovered(now) - 1.0)

    def healthy(self, now: float) -> bool:
        """Whether the floor holds at ``now``: the service has not failed much lately."""
        return self._recovered(now) >= HEALTH_FLOOR

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget allows it."""
        bucket = self._bucket(now)
        calls = sum(b[0] for b in self._buckets.values())
        retries = sum(b[1] for b in self._buckets.values())
        floor = self.min_per_second * self.window if self.healthy(now) else 0.0
        if retries + 1 > self.ratio * calls + floor:
            return False
        bucket[1] += 1
        return True
