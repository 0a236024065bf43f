"""The time a leader numbers its lease periods by: the wall clock, so that every leader
cuts time the same way, except that within one leader epoch it never goes back.

Agents drop a lease numbered below the period they are in (they only move forward in
(epoch, period)), so a leader whose wall clock stepped back by D within its term would lease
periods every agent drops, and lease none it keeps, for D seconds (or, with a lease period
already given out ahead, not at all until the wall clock is past it again). Within an epoch
the grid therefore advances by at least the monotonic time that passed: a step back leaves
it ahead of the wall clock by the step, for the rest of the term; a step forward moves it
forward with the wall clock (agents follow a lease further ahead). A new epoch starts on the
wall clock again: agents take a newer epoch's numbering as a new start.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["ForwardWall", "PeriodGrid"]


class PeriodGrid:
    """Wall seconds for the period grid, monotonic within one leader epoch.

    Args:
        clock: monotonic seconds.
        wall: epoch seconds.
    """

    def __init__(self, clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.clock = clock
        self.wall = wall
        self._epoch: int | None = None
        self._forward = ForwardWall(clock, wall)

    def now(self, epoch: int) -> float:
        """The grid's time now for a leader of ``epoch``: never below what it said before
        in this epoch plus the monotonic time since, nor below the wall clock."""
        if epoch != self._epoch:  # a new epoch starts over from the wall clock
            self._epoch, self._forward = epoch, ForwardWall(self.clock, self.wall)
        return self._forward()


class ForwardWall:
    """Wall seconds that never go back: the wall clock, or the highest reading so far plus
    the monotonic time since, whichever is later. A replica's bounds on epochs (its own and
    those agents claim) are taken on it: a wall clock stepping back must not put the epoch a
    leader already holds out of its own range (it would stop recording it, and leasing,
    until the wall clock caught up). After a step back it stays ahead of the wall clock by
    the step for the rest of the process.

    Args:
        clock: monotonic seconds.
        wall: epoch seconds.
    """

    def __init__(self, clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.clock = clock
        self.wall = wall
        self._mono = 0.0
        self._last = -math.inf

    def __call__(self) -> float:
        mono, wall = self.clock(), self.wall()
        now = max(wall, self._last + max(0.0, mono - self._mono))
        self._mono, self._last = mono, now
        return now
