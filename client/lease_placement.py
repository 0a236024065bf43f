"""Where a fleet lease's period starts on an agent's clock.

A lease names its period by the period's start on the leader's grid (``period``,
milliseconds) and says how long after the lease was made that start is (``starts_in``).
Placed at receive time + ``starts_in``, a period starts as late as its lease was delayed —
in the network, or in a loaded follower's socket buffer — by a different delay every time:
one period is stretched and the next shrunk (started early against the one before, a
window then holds more of this agent's leases than it should), and the agent's periods
slide out of phase with the rest of the fleet's, so a window can hold one agent's
period before a change of the split and another's after it.

Each lease is instead a sample of the leader's grid against this process's monotonic
clock: it was made at grid time ``period/1000 - starts_in`` and received later, so that
time minus the receive time is at most the true offset between the two clocks, short by
the lease's delay. The highest sample — the least delayed lease — is the best estimate
and never above the truth, so a period placed at its grid start minus the estimate never
starts before the leader's period does, and starts the same fixed time (the least delay
seen) after it in every period: periods follow each other at the leader's pace. A delay
only ever lowers a sample, so any hold on the way (a follower relaying, a queue) keeps
this true without being measured.

Clock rates differ a little (NTP slews a clock by at most 500 ppm): a sample loses
``DRIFT`` seconds per second of age, so an old sample never overstates an offset that
shrank since. Another leader cuts time on its own clock: the estimate starts over with
each leader epoch (every leader leases under a higher epoch), and for epoch 0 — a control
plane that runs without leader election — when the link is lost, since another process
may answer next. The receive time is monotonic: a wall-clock step on the agent changes
nothing.
"""

from __future__ import annotations

__all__ = ["DRIFT", "LeasePlacement"]

#: How fast the offset between a leader's grid and an agent's clock may change (seconds
#: per second): the most NTP slews a clock by.
DRIFT = 500e-6


class LeasePlacement:
    """The offset of one leader epoch's period grid against this process's clock, from
    the leases received (see the module's docstring)."""

    def __init__(self) -> None:
        self.epoch = -1
        self._best: float | None = None  # the best sample (grid seconds - local seconds)
        self._at = 0.0  # when it was received (local seconds)

    def offset(self, now: float) -> float | None:
        """The grid's time minus this process's, at ``now``: never above the truth."""
        if self._best is None:
            return None
        return self._best - DRIFT * max(0.0, now - self._at)

    def place(self, epoch: int, period_ms: int, starts_in: float, received: float) -> float:
        """Where the period of a lease received at ``received`` starts on this clock."""
        if epoch < self.epoch:  # a deposed leader's lease (ignored by the budget anyway)
            return received + starts_in
        if epoch > self.epoch:
            self.epoch, self._best = epoch, None
        grid_start = period_ms / 1000
        sample = grid_start - starts_in - received
        best = self.offset(received)
        if best is None or sample >= best:
            self._best, self._at = sample, received
            best = sample
        return grid_start - best

    def link_lost(self) -> None:
        """The stream ended: without leader epochs the next lease may be another process's."""
        if self.epoch == 0:
            self.epoch, self._best = -1, None
