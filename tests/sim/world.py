"""A virtual clock, an event queue and a faulty network, all driven by one seed.

Nothing here sleeps or reads the real clock: a schedule of hours runs in milliseconds and
the same seed replays the same schedule exactly.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable


class World:
    """Time and chance for one simulated schedule."""

    def __init__(self, seed: int, start: float = 1_000.0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = start
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (max(when, self.now), next(self._order), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def every(self, interval: float, action: Callable[[], None], until: float) -> None:
        """Run ``action`` every ``interval`` (with a little jitter) until ``until``."""

        def again() -> None:
            action()
            if self.now + interval < until:
                self.after(interval * self.rng.uniform(0.8, 1.2), again)

        self.after(interval * self.rng.random(), again)

    def run(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            when, _, action = heapq.heappop(self._events)
            self.now = when
            action()
        self.now = until


class Link:
    """One direction of a stream between two parties: messages arrive in order (a gRPC
    stream does not reorder), each after a random delay, until the link is cut."""

    def __init__(self, world: World, max_delay: float) -> None:
        self.world = world
        self.max_delay = max_delay
        self.up = True
        self._last = world.now

    def send(self, deliver: Callable[[], None]) -> None:
        if not self.up:
            return
        arrive = max(self._last, self.world.now + self.world.rng.uniform(0.0, self.max_delay))
        self._last = arrive

        def land() -> None:
            if self.up:
                deliver()

        self.world.at(arrive, land)

    def cut(self) -> None:
        """Everything still on the way is lost."""
        self.up = False
