"""An agent back after its horizon claims nothing of the last leader's units (I4).

A new leader warming up splits among the agents back what they say they spend without a
lease (``CapacityDemand.safe_units``): the others not back spend the rest of the last
leader's units. An agent whose stream broke long before, past its horizon, spends nothing;
if it claimed its old lease, the new leader would lease it that much again while the agents
still cut off spend the whole of the last leader's units (schedule 60080 of ``tests/sim``:
237 admitted in a 2 s window against 225).

Real ``CapacityLeaser`` leaders and ``LeasedBudget`` agents on an injected clock; a lease
reaches a connected agent at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser

from tests.support import lease_harness

LIMIT, WINDOW, PERIOD, HORIZON = 200, 2.0, 0.25, 3.0
UNITS = LIMIT * PERIOD / WINDOW  # 25 a period
STEP = 0.01
POLICY = default_policy(
    "shared",
    rate_limit_requests=LIMIT,
    rate_limit_window_secs=WINDOW,
    fleet=FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=HORIZON),
)


@dataclass
class Agent:
    budget: LeasedBudget
    connected: bool = True
    announced: int = -1
    admitted: list[float] = field(default_factory=list)


class Fleet:
    def __init__(self) -> None:
        self.now = 1000.0
        self.agents = {name: Agent(LeasedBudget(UNITS, PERIOD, None, self.now, HORIZON)) for name in "ab"}
        self.epoch, self.recorded = 0, 0
        self.leader: CapacityLeaser | None = None

    def lead(self, epoch: int) -> None:
        self.epoch = epoch
        self.leader = lease_harness.leader(
            POLICY, self._send, lambda: self.now, epoch, self.recorded, self._recorded
        )

    def _recorded(self) -> None:
        self.recorded = self.epoch

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        agent = self.agents[holder]
        if agent.connected:
            lease_harness.deliver(agent.budget, message, self.now)
        return agent.connected

    def _report(self, name: str, agent: Agent) -> None:
        """As the agent's connection reports its demand."""
        agent.budget.tick(self.now)
        if self.leader is None or not agent.connected:
            return
        told = lease_harness.demand(agent.budget, self.now, agent.announced == self.epoch)
        if told is not None:
            self.leader.demand(name, told)
            agent.announced = self.epoch

    def run(self, secs: float) -> None:
        """Every agent calls far more than its share: 20 calls a step."""
        end = self.now + secs
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            if self.leader is not None:
                self.leader.tick()
            for name, agent in self.agents.items():
                self._report(name, agent)
                for _ in range(20):
                    if agent.budget.take(1.0, self.now) == 0.0:
                        agent.admitted.append(self.now)

    def worst_window(self, since: float) -> int:
        admitted = sorted(t for agent in self.agents.values() for t in agent.admitted if t >= since)
        return lease_harness.worst_window(admitted, WINDOW)[0]


def test_an_agent_back_past_its_horizon_is_not_leased_what_agents_cut_off_spend() -> None:
    fleet = Fleet()
    fleet.lead(1)
    fleet.run(2.0)
    a, b = fleet.agents["a"], fleet.agents["b"]
    assert a.budget.leased and b.budget.leased and a.budget.last_units > 0

    # a's stream breaks; it spends its last lease until its horizon, then nothing, and b is
    # leased everything once the leader stops keeping a's part aside
    a.connected = False
    assert fleet.leader is not None
    fleet.leader.forget("a")
    fleet.run(HORIZON + 3.0)
    assert a.budget.cut_off(fleet.now)
    assert b.budget.last_units == UNITS

    # the leader crashes: b, cut off, spends its last lease (all the units) until its horizon
    fleet.leader, b.connected = None, False
    fleet.run(0.3)
    # a successor takes over and a comes back first
    since = fleet.now
    a.connected, a.announced = True, -1
    fleet.lead(3)
    fleet.run(WINDOW + 0.5)

    assert len([t for t in b.admitted if t >= since + WINDOW]) > 0  # b spent through it all
    assert fleet.worst_window(since) <= LIMIT + UNITS
