"""Where an agent places a lease's period: on the leader's grid, by the least delayed lease,
whatever this lease's delay (client/lease_placement.py). Real budgets on injected clocks:
each agent's clock is the leader's grid plus a skew of its own."""

from __future__ import annotations

import random

import pytest
from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.lease_placement import DRIFT, LeasePlacement

#: 200 units per 2-s window, leased per 0.5-s period: at most 250 in any window.
UNITS, PERIOD, WINDOW = 50.0, 0.5, 2.0
BOUND = UNITS * WINDOW / PERIOD + UNITS
#: Period p starts at grid time GRID + p * PERIOD; its lease is made half a period before.
GRID = 1_000_000.0
AHEAD = PERIOD / 2


def grid_start(p: int) -> float:
    return GRID + p * PERIOD


class Agent:
    """A budget on a clock ``skew`` seconds off the leader's grid; it admits what it can."""

    def __init__(self, skew: float) -> None:
        self.skew = skew
        self.budget = LeasedBudget(UNITS, PERIOD, None, GRID + skew)
        self.admitted: list[float] = []  # grid times

    def deliver(self, p: int, units: float, delay: float, epoch: int = 3) -> float:
        """The lease for period ``p``, made AHEAD before it starts, received ``delay`` later;
        returns when that was (grid time)."""
        made = grid_start(p) - AHEAD
        received = made + delay + self.skew
        self.budget.receive(round(grid_start(p) * 1000), units, AHEAD, received, PERIOD, 2, UNITS, epoch)
        return made + delay

    def call(self, at: float, count: int) -> None:
        for _ in range(count):
            if self.budget.take(1, at + self.skew) == 0.0:
                self.admitted.append(at)


def run(events: list[tuple[float, int, object]]) -> None:
    """Run ``(grid time, order, action)`` events in time order."""
    for _, _, action in sorted(events, key=lambda e: (e[0], e[1])):
        action()  # type: ignore[operator]


def worst_window(times: list[float]) -> int:
    times, worst, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - WINDOW:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def test_one_late_lease_does_not_shift_an_agents_period_against_the_fleets() -> None:
    # The split moves from b (45 of 50 in period 3) to a (45 in period 8). Every lease takes
    # 10 ms but b's for period 4 (240 ms, held in a loaded follower's socket buffer). Placed
    # at its receive time + starts_in, b's period 3 ran on 240 ms into period 4, where b
    # spent its 45 (its calls of period 3 came at its end), and a window then held them, b's
    # periods 4-7, a's 5-7 and a's 45 of period 8: 265 admitted against 250.
    a, b = Agent(skew=37.0), Agent(skew=-12.3)
    shares = {p: (25.0, 25.0) for p in range(12)}
    shares[3], shares[8] = (5.0, 45.0), (45.0, 5.0)
    events: list[tuple[float, int, object]] = []
    for p, (for_a, for_b) in shares.items():
        delay_b = 0.24 if p == 4 else 0.01
        events.append((grid_start(p) - AHEAD + 0.01, 0, lambda p=p, u=for_a: a.deliver(p, u, 0.01)))
        to_b = lambda p=p, u=for_b, d=delay_b: b.deliver(p, u, d)  # noqa: E731
        events.append((grid_start(p) - AHEAD + delay_b, 0, to_b))
        events.append((grid_start(p) + 0.015, 1, lambda p=p: a.call(grid_start(p) + 0.015, 60)))
        for into in (0.1, 0.3) if p != 3 else ():
            events.append((grid_start(p) + into, 1, lambda p=p, i=into: b.call(grid_start(p) + i, 60)))
    run(events)
    assert worst_window(a.admitted + b.admitted) <= BOUND
    # and a lost no period: it spent what it was leased
    assert len(a.admitted) == sum(u for u, _ in shares.values())


@pytest.mark.parametrize("seed", range(20))
def test_delayed_and_reordered_leases_never_start_a_period_early(seed: int) -> None:
    # Any delay (up to 0.8 s: leases overtake each other): a period is placed no earlier
    # than the leader's start, and never later than the least delay seen before it (and
    # what that sample lost to its age, DRIFT a second: 15 ms at most here). Placed
    # by receive time, a less delayed lease after a more delayed one cut the period before
    # it short: the next one started early against it.
    rng = random.Random(seed)
    agent = Agent(skew=rng.uniform(-1000, 1000))
    least = float("inf")
    deliveries = sorted((grid_start(p) - AHEAD + rng.uniform(0, 0.8), p) for p in range(1, 60))
    for received, p in deliveries:
        delay = received - (grid_start(p) - AHEAD)
        least = min(least, delay)
        start = agent.budget.placement.place(3, round(grid_start(p) * 1000), AHEAD, received + agent.skew)
        truth = grid_start(p) + agent.skew
        assert truth - 1e-9 <= start <= truth + least + DRIFT * 30


def test_a_new_leader_epoch_starts_the_estimate_over() -> None:
    # The new leader's clock is 5 s behind the old one's: kept, the old estimate would put
    # its periods 5 s early. Within an epoch, a lease held long lowers nothing.
    placement = LeasePlacement()
    assert placement.place(3, 10_000_000, 0.25, 0.01 + 9_999.75) == pytest.approx(10_000.01)
    assert placement.place(3, 10_000_500, 0.25, 10_000.60) == pytest.approx(10_000.51)  # held 0.35 s
    assert placement.place(4, 9_995_500, 0.25, 10_000.27) == pytest.approx(10_000.52)


def test_an_old_sample_ages_as_clocks_may_drift_apart() -> None:
    placement = LeasePlacement()
    placement.place(3, 1_000_000, 0.0, 1_000.0)  # offset 0, received at once
    later = 1_000.0 + 3600.0
    # an hour later a lease held 2.5 s: placed where the hour-old sample, aged by what the
    # clocks may have drifted apart since (1.8 s), says, not 1.8 s earlier
    start = placement.place(3, round(later * 1000), 0.0, later + 2.5)
    assert start == pytest.approx(later + DRIFT * 3602.5)
    # a lease received at once is the best sample again
    assert placement.place(3, round(later * 1000) + 500, 0.0, later + 0.5) == pytest.approx(later + 0.5)


def test_without_leader_epochs_a_lost_link_starts_the_estimate_over() -> None:
    placement = LeasePlacement()
    placement.place(0, 1_000_000, 0.0, 1_000.0)
    placement.link_lost()
    # the process answering now has a clock 5 s behind
    assert placement.place(0, 996_000, 0.0, 1_001.0) == pytest.approx(1_001.0)
    kept = LeasePlacement()
    kept.place(7, 1_000_000, 0.0, 1_000.0)
    kept.link_lost()  # an epoch's grid is the same through any replica
    assert kept.place(7, 1_001_000, 0.0, 1_001.3) == pytest.approx(1_001.0, abs=1e-3)
