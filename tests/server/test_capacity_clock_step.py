"""A leader whose wall clock steps within its term keeps leasing: the period numbers of one
epoch only go forward (server/capacity_grid.py). The real leaser and the agent's real
budget on injected clocks: 50 units per 0.5-s period, one agent asking 100 calls a second."""

from __future__ import annotations

import pytest
from mission_control.client.fleet_limits import LeasedBudget
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.capacity_grid import PeriodGrid

from tests.server.test_capacity import POLICY, RESOURCE

UNITS, PERIOD = 50.0, 0.5
STEP_AT = 10.0
WALL = 1_000_000.0


class Fleet:
    """One leader (epoch 7) and one agent on a monotonic clock ``t``; the leader's wall clock
    is ``t`` plus ``offset`` (changed to step it)."""

    def __init__(self) -> None:
        self.t, self.offset = 0.0, 0.0
        self.inbox: list[pb.CapacityLease] = []
        self.budget = LeasedBudget(UNITS, PERIOD, None, 0.0, unleased_secs=10.0)
        self.leaser = CapacityLeaser(
            lambda: [POLICY],
            self._send,
            epoch=lambda: 7,
            clock=lambda: self.t,
            wall=lambda: WALL + self.t + self.offset,
        )
        self.leaser.sync_policies()
        self.periods: list[int] = []
        self.admitted: list[float] = []  # the time of every call admitted

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        self.inbox.append(message.lease)
        return True

    def run(self, until: float, step_to: float | None = None) -> None:
        n = 0
        while self.t < until:
            if step_to is not None and self.t >= STEP_AT:
                self.offset, step_to = step_to, None
            if n % 5 == 0:  # the agent reports every 50 ms
                budget = self.budget
                demand = pb.CapacityDemand(
                    service="shared", resource=RESOURCE, wanted=100, agents=1, safe_units=budget.safe_units()
                )
                self.leaser.demand("a", demand)
            self.leaser.tick()
            for lease in self.inbox:
                self.periods.append(lease.period)
                start = self.t + lease.starts_in.ToNanoseconds() / 1e9
                units, agents, fleet_units = lease.units, lease.agents, lease.fleet_units
                self.budget.apply(lease.period, units, start, PERIOD, agents, fleet_units, lease.epoch)
            self.inbox.clear()
            if self.budget.take(1, self.t) == 0.0:
                self.admitted.append(self.t)
            n += 1
            self.t = round(self.t + 0.01, 6)

    def admitted_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.admitted)


@pytest.mark.parametrize("step", [-0.3, -2.0, -30.0, 3.0])
def test_a_leader_whose_clock_steps_keeps_leasing_forward(step: float) -> None:
    fleet = Fleet()
    fleet.run(STEP_AT + 20.0, step_to=step)
    # each period's lease is numbered above the one before: never backwards in one epoch
    assert all(b > a for a, b in zip(fleet.periods, fleet.periods[1:], strict=False)), fleet.periods
    # the agent goes on admitting its whole share (100 a second) in every second after the
    # step (the old code: nothing for about as long as the clock stepped back)
    for second in range(int(STEP_AT), int(STEP_AT) + 20):
        got = fleet.admitted_between(second, second + 1)
        assert got >= 90, f"{got} calls admitted in second {second} after a {step}-s step"
        # and never more than the limit: 100 a second
        assert got <= 2 * UNITS + 1, got


def test_the_grid_follows_the_wall_clock_forward_and_restarts_with_a_new_epoch() -> None:
    times = {"mono": 0.0, "wall": 500.0}
    grid = PeriodGrid(lambda: times["mono"], lambda: times["wall"])
    assert grid.now(1) == 500.0
    times["mono"], times["wall"] = 1.0, 491.0  # stepped back 10 s
    assert grid.now(1) == 501.0
    times["mono"], times["wall"] = 2.0, 520.0  # and forward past where the grid is
    assert grid.now(1) == 520.0
    times["mono"], times["wall"] = 3.0, 480.0
    assert grid.now(2) == 480.0  # a new epoch starts on the wall clock
