"""Each simulated process's wall clock, in the schedules with skewed clocks (``--skew``).

Without skew every replica and agent reads one wall clock (``EPOCH`` plus virtual time),
as the fleet's messages did before they said when they were sent. With it, each process
(by name: a replica restarted on the same address runs on the same host, and keeps its
clock) reads the virtual time plus an offset of up to :data:`MAX_SKEW_SECS` either way,
drifting at up to :data:`MAX_DRIFT` (seconds per second), and one in :data:`STEP_SHARE`
has its clock stepped once while faults run (as NTP steps a clock found far off), by up
to :data:`MAX_STEP_SECS` either way, within the skew. Monotonic clocks stay the loop's
(what a process compares with another's is only ever a wall-clock time it was sent).

The replicas' responses then carry what the wire carries (``world.Replica.serializer``):
``sent_at`` on the sender's clock, stamped by the real serializer as the stream takes each
message; hold ends and record times are on the clock of the replica that wrote them.

Drawn from a generator of their own (per seed and process name), so the schedules' other
draws stay as they are.

``--skew wild`` draws wilder clocks (:meth:`Clocks.draw_wild`): the same offsets, drifts of
up to :data:`WILD_DRIFT` (a second a minute), and every other process stepped forward and
back for good, a step of up to :data:`MAX_STEP_SECS` every :data:`WILD_PERIOD` seconds.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

#: How far a process's wall clock is from the virtual time, at most, either way.
MAX_SKEW_SECS = 10.0
#: How fast it drifts, at most (200 ppm: an unsynchronised quartz clock does ~50).
MAX_DRIFT = 2e-4
#: One process in this many has its wall clock stepped while faults run.
STEP_SHARE = 4
#: A step's size, at most (and the clock stays within :data:`MAX_SKEW_SECS`).
MAX_STEP_SECS = 5.0
#: Wild clocks (``--skew wild``): how fast they drift, at most (a second a minute), and how
#: long, at least and at most, a flapping one stays before it steps back or forth again.
WILD_DRIFT = 1 / 60
WILD_PERIOD = (2.0, 12.0)


@dataclass(frozen=True)
class WallClock:
    """Epoch seconds at virtual time ``t``: ``epoch + t + offset + drift * (t - start)``,
    plus ``step`` from ``step_at`` on, plus ``flap`` in every other ``period`` from
    ``start`` (stepped forward, then back: a wild clock's)."""

    epoch: float
    start: float
    offset: float = 0.0
    drift: float = 0.0
    step_at: float = math.inf
    step: float = 0.0
    period: float = math.inf
    flap: float = 0.0

    def at(self, t: float) -> float:
        flapped = self.flap and int((t - self.start) / self.period) % 2 == 1
        return (
            self.epoch
            + t
            + self.offset
            + self.drift * (t - self.start)
            + (self.step if t >= self.step_at else 0.0)
            + (self.flap if flapped else 0.0)
        )

    def skew_at(self, t: float) -> float:
        """How far ahead of the virtual time this clock is at ``t`` (negative: behind)."""
        return self.at(t) - self.epoch - t

    def reader(self) -> Callable[[], float]:
        loop = asyncio.get_running_loop()
        if not (self.offset or self.drift or self.step or self.flap):
            epoch = self.epoch
            return lambda: epoch + loop.time()
        return lambda: self.at(loop.time())


class Clocks:
    """The wall clock of every process of one schedule (all alike when not ``skewed``)."""

    def __init__(
        self, seed: int, epoch: float, skewed: bool, active_secs: float, *, wild: bool = False
    ) -> None:
        self.seed = seed
        self.epoch = epoch
        self.skewed = skewed or wild
        self.wild = wild
        self.active_secs = active_secs
        self._clocks: dict[str, WallClock] = {}

    def of(self, name: str) -> WallClock:
        """The clock of process ``name`` (a replica's address, an agent's name)."""
        clock = self._clocks.get(name)
        if clock is None:
            clock = self._clocks[name] = self._draw(name)
        return clock

    def _draw(self, name: str) -> WallClock:
        start = asyncio.get_running_loop().time()
        if not self.skewed:
            return WallClock(self.epoch, start)
        if self.wild:
            return self.draw_wild(name, start)
        rng = random.Random(f"clock-skew/{self.seed}/{name}")
        offset = rng.uniform(-MAX_SKEW_SECS, MAX_SKEW_SECS)
        drift = rng.uniform(-MAX_DRIFT, MAX_DRIFT)
        step_at, step = math.inf, 0.0
        if rng.randrange(STEP_SHARE) == 0:
            step_at = start + rng.uniform(0.1, 0.9) * self.active_secs
            wanted = rng.choice((-1, 1)) * rng.uniform(0.5, MAX_STEP_SECS)
            step = min(MAX_SKEW_SECS, max(-MAX_SKEW_SECS, offset + wanted)) - offset
        return WallClock(self.epoch, start, offset, drift, step_at, step)

    def draw_wild(self, name: str, start: float) -> WallClock:
        """A wild clock: offset as a skewed one's, drifting at half to all of
        :data:`WILD_DRIFT` either way; one in two flaps for good."""
        rng = random.Random(f"wild/{self.seed}/{name}")
        offset = rng.uniform(-MAX_SKEW_SECS, MAX_SKEW_SECS)
        drift = rng.choice((-1, 1)) * WILD_DRIFT * rng.uniform(0.5, 1)
        period, flap = math.inf, 0.0
        if rng.random() < 0.5:
            period = rng.uniform(*WILD_PERIOD)
            flap = rng.choice((-1, 1)) * rng.uniform(0.5, MAX_STEP_SECS)
        return WallClock(self.epoch, start, offset, drift, period=period, flap=flap)

    def set(self, name: str, offset: float) -> None:
        """Process ``name`` reads the virtual time plus ``offset`` (a scripted schedule's
        clock, set before the process starts)."""
        self._clocks[name] = WallClock(self.epoch, asyncio.get_running_loop().time(), offset)

    def drawn(self, name: str) -> bool:
        return name in self._clocks

    def describe(self, name: str) -> str:
        """What process ``name``'s clock does (for the schedule's log)."""
        c = self.of(name)
        text = f"clock of {name}: {c.offset:+.3f}s, drift {c.drift * 1e6:+.0f} ppm"
        text += f", stepped {c.step:+.3f}s at {c.step_at:.3f}" if c.step else ""
        return text + (f", stepped {c.flap:+.3f}s and back every {c.period:.3f}s" if c.flap else "")
