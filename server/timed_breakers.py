"""Which breakers time alone may change, and when: what the engine's tick looks at.

The tick runs every 20 ms. Walking every breaker each time cost 24 ms of CPU a tick with
15,000 stored (idle, CLOSED); walking every one time may change cost 50-70 ms a tick with
15,000 OPEN after a mass outage, so the loop was busy for good and the leader lease's
keep-alive and the store's pings waited behind it. Time changes a breaker only at the end
of an OPEN's wait or when a permit it holds expires (:meth:`CircuitBreaker.timed_at`), so
the engine marks a breaker here each time it changed — a report, an operator's state, a
probe granted, a stored state taken — and the breaker waits in a heap keyed by that time:
a tick takes only those whose time has come (:meth:`pop_due`), and one with nothing due
costs nothing whatever the number OPEN.

A breaker changed another way (a caller holding it) is found by a sweep that looks at every
breaker once per ``SWEEP_SECS``, a share of them each tick (in proportion to the time since
the last one), so none waits longer than that for its tick and no tick walks them all.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping

from mission_control.client.breaker import CircuitBreaker

#: How long the sweep takes to look at every breaker, marked or not.
SWEEP_SECS = 1.0
#: The most of all breakers one tick's sweep looks at (so with ticks further apart than
#: ``SWEEP_SECS * SWEEP_SHARE`` a round takes that many ticks instead).
SWEEP_SHARE = 0.1


class TimedBreakers:
    def __init__(self) -> None:
        #: (time, name): the earliest time each breaker may change, and older entries
        #: left behind (an entry counts only while it equals ``_at[name]``).
        self._heap: list[tuple[float, str]] = []
        self._at: dict[str, float] = {}
        #: The sweep: names still to look at in this round, and when the last tick was.
        self._round: list[str] = []
        self._swept_at = -math.inf
        #: Breakers looked at, in all (taken from the heap or swept): what a tick costs.
        self.visited = 0

    def mark(self, breaker: CircuitBreaker) -> None:
        """``breaker`` changed: looked at by the tick once its time has come."""
        at = breaker.timed_at()
        if at is not None:
            self._schedule(breaker.name, at)

    def forget(self, name: str) -> None:
        self._at.pop(name, None)

    def _schedule(self, name: str, at: float) -> None:
        known = self._at.get(name)
        if known is None or at < known:  # a later time: the earlier entry looks again
            self._at[name] = at
            heapq.heappush(self._heap, (at, name))

    def sweep(self, breakers: Mapping[str, CircuitBreaker], now: float) -> None:
        """Look at this tick's share of all breakers, scheduling any time may change."""
        if not breakers:
            self._swept_at = now
            return
        # (none on the first tick or after the clock went back; at most SWEEP_SHARE after
        # a long gap: a stalled loop does not catch up with one tick that walks them all)
        elapsed = now - self._swept_at if now >= self._swept_at > -math.inf else 0.0
        share = min(SWEEP_SHARE, elapsed / SWEEP_SECS)
        self._swept_at = now
        count = max(1, math.ceil(share * len(breakers)))
        while count > 0:
            if not self._round:
                self._round = list(breakers)
                self._round.reverse()  # taken from the end: name order
                count = min(count, len(self._round))
            name = self._round.pop()
            count -= 1
            breaker = breakers.get(name)
            self.visited += 1
            if breaker is not None:
                self.mark(breaker)

    def pop_due(self, breakers: Mapping[str, CircuitBreaker], now: float) -> Iterator[CircuitBreaker]:
        """The breakers whose time has come by ``now``, earliest first, each taken off the
        heap as it is yielded (the caller marks it again once its tick is done). A caller
        that stops early leaves the rest for its next call."""
        heap = self._heap
        taken: set[str] = set()
        while heap and heap[0][0] <= now:
            at, name = heapq.heappop(heap)
            if self._at.get(name) != at:
                continue  # an older entry: the breaker was scheduled earlier since
            if name in taken:  # its tick left it due (it should not): the next tick's,
                heapq.heappush(heap, (at, name))  # so its entry goes back (``_at`` names it)
                break
            del self._at[name]
            breaker = breakers.get(name)
            self.visited += 1
            if breaker is None:
                continue
            next_at = breaker.timed_at()
            if next_at is None:
                continue
            if next_at > now:
                self._schedule(name, next_at)
                continue
            taken.add(name)
            yield breaker

    def due(self, now: float) -> bool:
        """Whether a breaker's time has come by ``now`` (one left by a tick cut short)."""
        while self._heap and self._at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return bool(self._heap) and self._heap[0][0] <= now

    def __len__(self) -> int:
        return len(self._at)
