"""Fleet-limit leases under faults: the real leaser and the real agent budgets on a virtual
clock, with agents joining, leaving, dying, cut off for a while or for good (still
calling), most of them knowing one of two replicas only; the leader's replica crashing and
coming back later or never, a new leader (a new epoch) taking over on a live replica with
the fenced record of until when the earlier one leased, and every message delayed.

Checked (I4): in every window, the units agents admitted are at most the limit plus one
lease period's worth.
"""

from __future__ import annotations

import functools
import random

from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.lease_epoch import RECORD_AHEAD_SECS

from .world import Link, World

SERVICE = "shared"
RESOURCE = f"{SERVICE}.requests"
MAX_DELAY = 0.1
WALL = 1_700_000_000.0  # the leaders' wall clock, less the virtual time
REPLICAS = ("r1", "r2")
RECONNECT_SECS = 5.0  # an agent's reconnect backoff, at most


class Record:
    """The fleet-lease epoch record in the store: until when the last leader may lease."""

    def __init__(self) -> None:
        self.until: float | None = None


class Leader:
    """One leader's leaser, for as long as it lives."""

    def __init__(self, world: World, policy: object, epoch: int, record: Record) -> None:
        self.world = world
        self.alive = True
        self.holders: dict[str, SimAgent] = {}
        self.record = record
        self.recorded = 0.0  # until when this leader's record lets it lease
        earlier = record.until
        self.leaser = CapacityLeaser(
            lambda: [policy],  # type: ignore[list-item]
            self._send,
            epoch=lambda: epoch,
            leased_before=lambda: epoch > 1,
            earlier_until=lambda: earlier,
            may_lease=self._may_lease,
            clock=world.clock,
            wall=lambda: world.now + WALL,
        )
        self.leaser.sync_policies()
        world.every(0.02, self.tick, until=1e18)

    def tick(self) -> None:
        if self.alive:
            self.leaser.tick()

    def _may_lease(self, end: float, then: float) -> bool:
        wall = self.world.now + WALL
        ahead = max(end, then)
        if self.alive and (self.recorded - wall < RECORD_AHEAD_SECS / 2 or ahead > self.recorded):
            # fenced: while it leads
            self.recorded = self.record.until = max(wall + RECORD_AHEAD_SECS, ahead + RECORD_AHEAD_SECS / 2)
        return end <= self.recorded

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

    def __init__(self, world: World, agent_id: str, fleet: FleetLimits, units: float, rate: float) -> None:
        self.world, self.id = world, agent_id
        self.offset = world.rng.uniform(-500.0, 500.0)  # each process has its own monotonic clock
        self.budget = LeasedBudget(units, fleet.lease_secs, fleet.safe_share, self.now(), fleet.unleased_secs)
        self.rate = rate
        self.alive = True
        self.leader: Leader | None = None
        self.up = self.down = Link(world, MAX_DELAY)
        self.admitted: list[float] = []
        #: The replicas it can reach; cut off for good when isolated (and still calling).
        self.knows: set[str] = set(REPLICAS)
        self.isolated = False

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
            safe_units=self.budget.claim(self.now()),
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


def run(seed: int, seconds: float = 45.0) -> list[str]:
    """One seeded schedule; returns the invariant violations (empty when all held)."""
    world = World(seed)
    rng = world.rng
    limit, window = 200, 2.0
    period = rng.choice([0.25, 0.5, 1.0])
    fleet = FleetLimits(rate_limit=True, lease_secs=period, unleased_secs=rng.choice([3.0, 8.0, 20.0]))
    policy = default_policy(SERVICE, rate_limit_requests=limit, rate_limit_window_secs=window, fleet=fleet)
    units = limit * period / window
    end = world.now + seconds
    epoch = [1]
    replicas = Replicas(world, rng, policy)
    agents: list[SimAgent] = []

    def reconnect(agent: SimAgent) -> None:
        # within the agent's reconnect backoff; it gets through once a replica it knows
        # is up and a leader is elected
        world.after(rng.uniform(0.05, RECONNECT_SECS), lambda: replicas.connect(agent))

    def join() -> None:
        agent = SimAgent(world, f"agent-{len(agents)}", fleet, units, rng.choice([5.0, 20.0, 60.0]))
        # most agents know one replica only (its address, or a DNS name that is one of them)
        agent.knows = {rng.choice(REPLICAS)} if rng.random() < 0.7 else set(REPLICAS)
        agents.append(agent)
        world.every(1.0 / agent.rate, agent.call, until=end)
        world.every(0.05, agent.report, until=end)
        world.after(rng.uniform(0.0, 0.5), lambda: replicas.connect(agent))

    def churn() -> None:
        live = [a for a in agents if a.alive]
        roll = rng.random()
        if roll < 0.3 or len(live) < 2:
            join()
        elif roll < 0.45:
            victim = rng.choice(live)
            victim.cut(goodbye=True)  # closes and leaves
            victim.alive = False
        elif roll < 0.55:
            victim = rng.choice(live)
            victim.cut()  # dies
            victim.alive = False
        elif roll < 0.7:
            victim = rng.choice(live)
            victim.cut()  # cut off for a while, spending what it may without a lease
            reconnect(victim)
        elif roll < 0.8:
            victim = rng.choice(live)
            victim.cut()  # cut off for good, and still calling
            victim.isolated = True
        else:
            replicas.crash(agents, epoch)
        world.after(rng.uniform(0.3, 4.0), churn)

    for _ in range(rng.randint(2, 8)):
        join()
    world.after(rng.uniform(0.5, 3.0), churn)
    world.run(end)
    admitted = [t for agent in agents for t in agent.admitted]
    worst = worst_window(admitted, window)
    if worst > limit + units + 1e-9:
        return [f"{worst} admitted in one {window} s window (limit {limit} + one period's {units:g})"]
    return []


class Replicas:
    """The control-plane replicas: one of the live ones leads; a crashed one comes back
    after a while, or never. An agent reaches the leader through any live replica it
    knows (a follower relays), and through no other."""

    def __init__(self, world: World, rng: random.Random, policy: object) -> None:
        self.world, self.rng, self.policy = world, rng, policy
        self.live = dict.fromkeys(REPLICAS, True)
        self.on = REPLICAS[0]
        self.record = Record()
        self.leader: Leader | None = Leader(world, policy, 1, self.record)

    def connect(self, agent: SimAgent) -> None:
        leader = self.leader
        if agent.leader is not None or agent.isolated or leader is None:
            return
        if any(self.live[name] for name in agent.knows):
            agent.connect(leader)

    def crash(self, agents: list[SimAgent], epoch: list[int]) -> None:
        old = self.leader
        if old is None:
            return  # no leader; one is on the way
        old.alive, self.leader = False, None
        self.live[self.on] = False
        for agent in agents:
            if agent.leader is old:
                agent.cut()
        crashed = self.on
        if self.rng.random() < 0.6:  # restarted by its supervisor, or gone for good
            self.world.after(self.rng.uniform(1.0, 20.0), lambda: self._restart(crashed, agents, epoch))
        self.world.after(self.rng.uniform(0.5, 4.0), lambda: self._elect(agents, epoch))

    def _restart(self, name: str, agents: list[SimAgent], epoch: list[int]) -> None:
        self.live[name] = True
        if self.leader is None:
            self._elect(agents, epoch)
        else:
            self._reconnect(agents)

    def _elect(self, agents: list[SimAgent], epoch: list[int]) -> None:
        up = [name for name, live in self.live.items() if live]
        if self.leader is not None or not up:
            return  # led already, or nobody to lead until a replica is back
        epoch[0] += 1
        self.on = self.rng.choice(up)
        self.leader = Leader(self.world, self.policy, epoch[0], self.record)
        self._reconnect(agents)

    def _reconnect(self, agents: list[SimAgent]) -> None:
        for agent in agents:
            if agent.alive and agent.leader is None:
                self.world.after(self.rng.uniform(0.05, 2.0), functools.partial(self.connect, agent))
