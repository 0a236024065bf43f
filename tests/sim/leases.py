"""Fleet-limit leases under faults: the real leaser and the real agent budgets on a virtual
clock, with agents joining, leaving, dying and being cut off for a while, the leader
crashing and a new one (a new epoch) taking over, and every message delayed.

Checked (I4): in every window, the units agents admitted are at most the limit plus one
lease period's worth.
"""

from __future__ import annotations

from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import RECONNECT_GRACE_SECS, CapacityLeaser

from .world import Link, World

SERVICE = "shared"
RESOURCE = f"{SERVICE}.requests"
MAX_DELAY = 0.1
WALL = 1_700_000_000.0  # the leaders' wall clock, less the virtual time


class Leader:
    """One leader's leaser, for as long as it lives."""

    def __init__(self, world: World, policy: object, epoch: int) -> None:
        self.world = world
        self.alive = True
        self.holders: dict[str, SimAgent] = {}
        self.leaser = CapacityLeaser(
            lambda: [policy],  # type: ignore[list-item]
            self._send,
            epoch=lambda: epoch,
            leased_before=lambda: epoch > 1,
            clock=world.clock,
            wall=lambda: world.now + WALL,
        )
        self.leaser.sync_policies()
        world.every(0.02, self.tick, until=1e18)

    def tick(self) -> None:
        if self.alive:
            self.leaser.tick()

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        agent = self.holders.get(holder)
        if agent is None:
            return False
        agent.down.send(lambda: agent.lease(message.lease))
        return True

    def gone(self, agent: SimAgent) -> None:
        if self.holders.get(agent.id) is agent:
            del self.holders[agent.id]
            self.world.after(self.world.rng.uniform(0.0, 1.0), lambda: self.leaser.forget(agent.id))


class SimAgent:
    """One agent: its budget on its own clock, its stream, and a caller."""

    def __init__(self, world: World, agent_id: str, units: float, period: float, rate: float) -> None:
        self.world, self.id = world, agent_id
        self.offset = world.rng.uniform(-500.0, 500.0)  # each process has its own monotonic clock
        self.budget = LeasedBudget(units, period, None, self.now())
        self.rate = rate
        self.alive = True
        self.leader: Leader | None = None
        self.up = self.down = Link(world, MAX_DELAY)
        self.admitted: list[float] = []

    def now(self) -> float:
        return self.world.now + self.offset

    def connect(self, leader: Leader) -> None:
        if not (self.alive and leader.alive):
            return
        self.leader = leader
        self.up, self.down = Link(self.world, MAX_DELAY), Link(self.world, MAX_DELAY)
        leader.holders[self.id] = self
        self.report(announce=True)

    def cut(self, goodbye: bool = False) -> None:
        if goodbye:
            self.report(leaving=True)
        self.up.cut()
        self.down.cut()
        if self.leader is not None:
            self.leader.gone(self)
        self.leader = None

    def lease(self, lease: pb.CapacityLease) -> None:
        start = self.now() + lease.starts_in.ToNanoseconds() / 1e9
        length = lease.period_length.ToNanoseconds() / 1e9
        self.budget.apply(
            lease.period, lease.units, start, length, lease.agents, lease.fleet_units, lease.epoch
        )

    def report(self, announce: bool = False, leaving: bool = False) -> None:
        leader = self.leader
        if leader is None or not self.alive:
            return
        self.budget.tick(self.now())
        reports = self.budget.drain_reports()
        if not (reports or announce or leaving):
            return
        demand = pb.CapacityDemand(
            service=SERVICE,
            resource=RESOURCE,
            agents=1,
            agents_known=self.budget.agents,
            safe_units=self.budget.safe_units(),
            leaving=leaving,
        )
        if reports:
            demand.period, demand.wanted, demand.used = (
                reports[-1].period,
                reports[-1].wanted,
                reports[-1].used,
            )
            demand.leased = reports[-1].leased
        self.up.send(lambda: leader.leaser.demand(self.id, demand))

    def call(self) -> None:
        if self.alive and self.budget.take(1.0, self.now()) == 0.0:
            self.admitted.append(self.world.now)


def worst_window(times: list[float], window: float) -> int:
    times = sorted(times)
    worst, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def run(seed: int, seconds: float = 40.0) -> list[str]:
    """One seeded schedule; returns the invariant violations (empty when all held)."""
    world = World(seed)
    rng = world.rng
    limit, window = 200, 2.0
    period = rng.choice([0.25, 0.5, 1.0])
    policy = default_policy(
        SERVICE,
        rate_limit_requests=limit,
        rate_limit_window_secs=window,
        fleet=FleetLimits(rate_limit=True, lease_secs=period),
    )
    units = limit * period / window
    end = world.now + seconds
    epoch = [1]
    leader = [Leader(world, policy, epoch[0])]
    agents: list[SimAgent] = []

    def reconnect(agent: SimAgent) -> None:
        # within the agent's reconnect backoff (always shorter than the leader's grace)
        world.after(rng.uniform(0.05, RECONNECT_GRACE_SECS / 2), lambda: agent.connect(leader[0]))

    def join() -> None:
        agent = SimAgent(world, f"agent-{len(agents)}", units, period, rng.choice([5.0, 20.0, 60.0]))
        agents.append(agent)
        world.every(1.0 / agent.rate, agent.call, until=end)
        world.every(0.05, agent.report, until=end)
        world.after(rng.uniform(0.0, 0.5), lambda: agent.connect(leader[0]))

    def churn() -> None:
        live = [a for a in agents if a.alive]
        roll = rng.random()
        if roll < 0.35 or len(live) < 2:
            join()
        elif roll < 0.55:
            victim = rng.choice(live)
            victim.cut(goodbye=True)  # closes and leaves
            victim.alive = False
        elif roll < 0.7:
            victim = rng.choice(live)
            victim.cut()  # dies
            victim.alive = False
        elif roll < 0.9:
            victim = rng.choice(live)
            victim.cut()  # cut off for a while, spending its safe share
            reconnect(victim)
        else:
            crash()
        world.after(rng.uniform(0.3, 4.0), churn)

    def crash() -> None:
        old = leader[0]
        if not old.alive:
            return  # already down; its successor is on the way
        old.alive = False
        for agent in agents:
            if agent.leader is old:
                agent.cut()

        def elect() -> None:
            epoch[0] += 1
            leader[0] = Leader(world, policy, epoch[0])
            for agent in agents:
                if agent.alive and agent.leader is None:
                    reconnect(agent)

        world.after(rng.uniform(0.5, 4.0), elect)

    for _ in range(rng.randint(2, 8)):
        join()
    world.after(rng.uniform(0.5, 3.0), churn)
    world.run(end)
    admitted = [t for agent in agents for t in agent.admitted]
    worst = worst_window(admitted, window)
    if worst > limit + units + 1e-9:
        return [f"{worst} admitted in one {window} s window (limit {limit} + one period's {units:g})"]
    return []
