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
#: ... and it never falls below this, a point under the floor: however long an outage
#: lasted, a few successes bring the floor back for the next failure (seven, a minute or
#: more apart; about twenty at once).
HEALTH_MIN = 5.0
#: What a successful attempt gives back to the score at once (a failed one takes 1).
SUCCESS_GAIN = 0.1
#: What a successful attempt earns on top, for time to give back later ...
EARNED_GAIN = 0.2
#: ... up to this much earned and not yet given back (what time may give back after the
#: last success: a quiet service's lone failing call is forgiven; an outage is not).
EARNED_MAX = 2.0
#: Seconds for time to give back a whole score (half a point a minute), from what the
#: successes earned: a caller of one call a minute gets 0.3 back per success, one of one
#: call a second hardly more than 0.1.
RECOVERY_SECS = 1200.0


class RetryBudget:
    """Retries may be at most ``ratio`` × calls over the last ``window_secs``, plus a floor
    of ``min_per_second`` × window while the service is healthy — so an outage cannot
    multiply the load on a failing service by the retry count (the idea of gRPC's
    retryThrottling).

    Healthy: a score starts at :data:`HEALTH_FULL` and loses one for each failed attempt,
    a call's first as any retry (never below :data:`HEALTH_MIN`); the floor holds while it
    is at least :data:`HEALTH_FLOOR`. A success gives back :data:`SUCCESS_GAIN` at once and earns
    :data:`EARNED_GAIN` more, which time gives back (the whole score in
    :data:`RECOVERY_SECS`); what is earned and not yet given back is capped at
    :data:`EARNED_MAX`. Time alone gives nothing: a slow caller of a service that is down
    stays without the floor as long as the outage lasts, whatever the time between its calls
    (when time gave the score back whatever the outcomes, two points between two calls
    four minutes apart, every call of an outage at that rate or slower was retried, up to
    4.00x). A success makes up for less than the failure before it (at most 0.3 of the
    point, however slow the caller), so a service failing about a quarter of its attempts
    or more loses the floor too, and only the ratio funds its retries. A quiet, working
    service keeps its floor: a lone failing call is retried, and the successes before
    it earned what time gives back after it.
    """

    __slots__ = ("_at", "_buckets", "earned", "health", "min_per_second", "ratio", "window")

    def __init__(self, ratio: float, min_per_second: float, window_secs: float) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window_secs
        self.health = float(HEALTH_FULL)
        self.earned = 0.0  # what successes earned that time has not given back yet
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
        """The score at ``now``, with what the time since it was last brought up to date
        gave back of what the successes earned."""
        if self.earned > 0.0 and self.health < HEALTH_FULL and now > self._at:
            given = min(
                self.earned, (now - self._at) * HEALTH_FULL / RECOVERY_SECS, HEALTH_FULL - self.health
            )
            self.health += given
            self.earned -= given
        self._at = max(self._at, now)
        return self.health

    def succeeded(self, now: float) -> None:
        """An attempt of the service succeeded (at ``now``): for a healthy service, whose
        score is full and has earned all it may, two comparisons (every call's path)."""
        if self.health < HEALTH_FULL:
            self.health = min(float(HEALTH_FULL), self._recovered(now) + SUCCESS_GAIN)
        if self.earned < EARNED_MAX:
            self.earned = min(EARNED_MAX, self.earned + EARNED_GAIN)

    def failed(self, now: float) -> None:
        """An attempt of the service failed (at ``now``): a call's first as a retry."""
        self.health = max(HEALTH_MIN, self._recovered(now) - 1.0)

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
