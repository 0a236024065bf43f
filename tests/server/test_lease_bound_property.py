"""What agents admit under fleet leases stays within the limit plus one period's units in
every window (I4), over many random schedules of one shared limit on an injected clock.

Each schedule draws a fractional limit a period (whole units leased: the units left over
by rounding go one each to a few agents, in turns), agents with random demand, and faults:
an agent's stream breaks (the leader hears of it) and comes back, an agent joins, the
leader crashes and, after up to 3 s without one, a new leader takes over (warming up: the
record names the last epoch that leased). The leaders are real ``CapacityLeaser`` objects,
the agents real ``LeasedBudget`` objects spending one unit a call; a lease reaches a
connected agent at once. Every call admitted is counted, and no 2 s window may hold more
than the limit plus one period's units. Agents without a lease spend their last ones again
without the unit left over by rounding (``client/lease_respent.py`` argues why that keeps
the bound); spending the whole last lease again breaks it in 5 of these 200 schedules
(one leader's count of the claims of agents back, each holding such a unit of another
period, taken for the whole fleet while an agent it never heard of spends its own).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser

from tests.support import lease_harness

WINDOW = 2.0
STEP = 0.01
START = 5000.0
SCHEDULES = 200


@dataclass
class Agent:
    budget: LeasedBudget
    want: float  # calls a period
    connected: bool = True
    announced: int = -1  # the leader epoch its limits were last reported to


@dataclass
class Schedule:
    """One random schedule: run it with :meth:`run`, read ``admitted``."""

    seed: int
    rng: random.Random = field(init=False)
    now: float = START
    admitted: list[float] = field(default_factory=list)
    agents: dict[str, Agent] = field(default_factory=dict)
    leader: CapacityLeaser | None = None
    epoch: int = 5
    recorded: int = 0  # the last epoch that leased (the record)
    back_at: float = 0.0  # a crashed leader's successor takes over then

    def __post_init__(self) -> None:
        self.rng = rng = random.Random(self.seed)
        self.limit = rng.choice((9, 9, 15, 30))
        self.period = rng.choice((0.25, 0.5))
        self.units = self.limit * self.period / WINDOW
        self.policy = default_policy(
            "shared",
            rate_limit_requests=self.limit,
            rate_limit_window_secs=WINDOW,
            fleet=FleetLimits(rate_limit=True, lease_secs=self.period, unleased_secs=30.0),
        )
        for _ in range(rng.randint(2, 5)):
            self._join()
        self._lead()

    def _join(self) -> None:
        budget = LeasedBudget(self.units, self.period, None, self.now, unleased_secs=30.0)
        want = self.rng.choice((0.5, 1.0, 2.0, 4.0)) * self.units
        self.agents[f"agent-{len(self.agents)}"] = Agent(budget, want)

    def _lead(self) -> None:
        self.leader = lease_harness.leader(
            self.policy, self._send, lambda: self.now, self.epoch, self.recorded, self._recorded
        )

    def _recorded(self) -> None:
        self.recorded = self.epoch

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        agent = self.agents[holder]
        if agent.connected:
            lease_harness.deliver(agent.budget, message, self.now)
        return agent.connected

    def _faults(self) -> None:
        rng = self.rng
        for name, agent in self.agents.items():
            if agent.connected and rng.random() < 0.002:
                agent.connected = False
                if self.leader is not None:
                    self.leader.forget(name)
            elif not agent.connected and rng.random() < 0.004:
                agent.connected, agent.announced = True, -1
            if rng.random() < 0.003:
                agent.want = rng.choice((0.0, 0.5, 1.0, 2.0, 4.0)) * self.units
        if len(self.agents) < 6 and rng.random() < 0.001:
            self._join()
        if self.leader is not None and rng.random() < 0.004:
            self.leader = None  # crashed: agents spend their last leases
            self.back_at = self.now + rng.uniform(0.0, 3.0)
        elif self.leader is None and self.now >= self.back_at:
            self.epoch += 2
            self._lead()

    def _report(self, name: str, agent: Agent) -> None:
        agent.budget.tick(self.now)
        if self.leader is None or not agent.connected:
            return
        told = lease_harness.demand(agent.budget, self.now, agent.announced == self.epoch)
        if told is not None:
            self.leader.demand(name, told)
            agent.announced = self.epoch

    def run(self, secs: float) -> None:
        end = START + secs
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            self._faults()
            if self.leader is not None:
                self.leader.tick()
            for name, agent in self.agents.items():
                self._report(name, agent)
                calls = agent.want * STEP / self.period
                for _ in range(int(calls) + (self.rng.random() < calls % 1)):
                    if agent.budget.take(1.0, self.now) == 0.0:
                        self.admitted.append(self.now)

    def worst_window(self) -> tuple[int, float]:
        """The most calls admitted in one window, and where it ends."""
        worst, at = lease_harness.worst_window(self.admitted, WINDOW)
        return worst, at if worst else START


@pytest.mark.parametrize("first", range(0, SCHEDULES, 20))
def test_admitted_units_stay_within_the_limit_and_one_period(first: int) -> None:
    for seed in range(first, first + 20):
        schedule = Schedule(seed)
        schedule.run(20.0)
        worst, at = schedule.worst_window()
        bound = schedule.limit + schedule.units
        assert worst <= bound + 1e-9, (seed, schedule.limit, schedule.period, worst, at)
