"""HALF_OPEN probing under faults: the real engine and the real agent code (view, permits,
executor admission) on a virtual clock, with agents joining, leaving and dying mid-probe,
a dependency that fails and recovers, and grants that overtake the state pushes.

Checked (I3): never more than ``success_threshold`` probes of one HALF_OPEN in flight;
an agent that keeps asking gets a permit within one probe TTL unless the probes in flight
are at the limit meanwhile (one until a probe succeeded, then the threshold), or a permit
went with a holder that died, which comes back once its hold (the TTL and the policy's
timeout) has passed since its grant (the control plane cannot tell a dead holder from one
whose stream broke, or that is cut off, while it probes on).
"""

from __future__ import annotations

import random

import grpc
from mission_control.client.admission import Refused
from mission_control.client.breaker import BreakerState
from mission_control.client.clock_offset import ClockOffset
from mission_control.client.errors import LLMProviderUnavailable
from mission_control.client.executor import Executor
from mission_control.client.outcomes import Counts, Failure
from mission_control.client.policy import default_policy
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import PROBE_TTL_SECS, FleetBreakers

from .world import Link, World

SERVICE = "dep"
MAX_DELAY = 0.3


#: The wall clock of the engine and of the agents, less the virtual time.
WALL = 1e9
#: With clocks apart: how far each process's wall clock may be off (either way).
SKEW_SECS = 10.0


class Plane:
    """The engine and the streams of the agents connected to it."""

    def __init__(self, world: World, policy_of, skews: random.Random | None = None) -> None:  # type: ignore[no-untyped-def]
        self.world = world
        #: Draws each process's wall clock's offset (None: the clocks agree).
        self.skews = skews
        skew = skews.uniform(-SKEW_SECS, SKEW_SECS) if skews is not None else 0.0
        self.wall = lambda: world.now + WALL + skew
        self.engine = FleetBreakers(policy_of, clock=world.clock, wall=self.wall)
        self.agents: dict[str, SimAgent] = {}
        self.engine.change_listeners.append(self._push)
        self.engine.grant_listeners.append(self._grant)
        #: When each agent was last granted a permit.
        self.granted_at: dict[str, float] = {}
        world.every(0.02, self.engine.tick, until=1e18)

    def _push(self, message: pb.Breaker, *_: object) -> None:
        for agent in list(self.agents.values()):
            agent.receive_state(message)

    def _grant(self, agent_id: str, grant: pb.ProbeGrant) -> None:
        agent = self.agents.get(agent_id)
        self.granted_at[agent_id] = self.world.now
        if agent is not None:
            agent.receive_grant(grant)
        else:  # not sent: as the control plane does when a stream is gone
            self.world.after(0.0, lambda: self.engine.undelivered(agent_id, grant))

    def gone(self, agent: SimAgent) -> None:
        """The stream broke: the control plane notices a little later."""
        if self.agents.get(agent.id) is agent:
            del self.agents[agent.id]
            self.world.after(self.world.rng.uniform(0.0, 1.0), lambda: self.engine.release_agent(agent.id))


class SimAgent:
    """One agent process: its view and executor, its stream, and a caller that calls."""

    def __init__(self, world: World, plane: Plane, agent_id: str, checker: Checker) -> None:
        self.world, self.plane, self.id, self.checker = world, plane, agent_id, checker
        # a grant's hold end is read through the engine's clock offset, measured from the
        # times the messages were sent (``ConnectResponse.sent_at``), as a real agent does
        skew = plane.skews.uniform(-SKEW_SECS, SKEW_SECS) if plane.skews is not None else 0.0
        self.view = LocalView(
            lambda name: plane.engine.get(name).policy,
            clock=world.clock,
            wall=lambda: world.now + WALL + skew,
        )
        self.offset = ClockOffset()
        self.executor = Executor(self.view, self)  # type: ignore[arg-type]
        self.alive = True
        self.up = Link(world, MAX_DELAY)
        self.state_down = Link(world, MAX_DELAY)
        self.grant_down = Link(world, MAX_DELAY)  # a follower relays grants on another path
        self.asked_at = -1e9
        plane.agents[agent_id] = self
        for message in plane.engine.snapshot():
            self.receive_state(message)
        self.state_down.send(self._connected)
        world.every(0.05, self.flush, until=1e18)

    def _connected(self) -> None:
        self.view.connected = True

    # -- the connection ----------------------------------------------------------

    def receive_state(self, message: pb.Breaker) -> None:
        copy = pb.Breaker()
        copy.CopyFrom(message)
        sent = self.plane.wall()
        self.state_down.send(lambda: self._sampled(sent) or self.view.set_breaker(copy))
        if self.world.rng.random() < 0.05:  # pushed again (a snapshot after a hiccup)
            self.state_down.send(lambda: self._sampled(sent) or self.view.set_breaker(copy))

    def receive_grant(self, grant: pb.ProbeGrant) -> None:
        sent = self.plane.wall()
        self.grant_down.send(lambda: self._sampled(sent) or self.view.grant(grant, self.offset.estimate()))

    def _sampled(self, sent: float) -> None:
        self.offset.sample(sent, self.world.now)

    def ask_probe(self, service: str) -> None:
        state = self.view.get(service)
        now = self.world.now
        if now - state.probe_asked_at < 0.1:
            return
        state.probe_asked_at = now
        with state.lock:
            state.permits.want(now)
        self.up.send(lambda: self.plane.engine.request_probe(self.id, service))

    def nudge(self) -> None:
        pass

    def flush(self) -> None:
        if not self.alive:
            return
        tally = self.view.get(SERVICE).drain(self.world.now)
        if tally is not None:
            summary = tally.to_proto(SERVICE)
            self.up.send(lambda: self.plane.engine.record(self.id, summary))

    def cut(self) -> None:
        """The process dies: its probes end with it (the control plane frees its permits
        once it notices the stream is gone)."""
        self.checker.holder_gone(self)
        for link in (self.up, self.state_down, self.grant_down):
            link.cut()
        self.view.forget_fleet()
        self.plane.gone(self)

    # -- the caller ------------------------------------------------------------

    def call(self, healthy: bool) -> None:
        if not self.alive:
            return
        ticket = self.executor.enter(SERVICE, "op", "llm", None, None)
        if isinstance(ticket, Refused):
            self.checker.refused(self)
            return
        probe = ticket.probe
        generation = getattr(probe, "generation", 0)
        if probe == "fleet":
            self.checker.probe_started(self, generation)
            self.checker.running.setdefault(self.id, []).append(generation)
        took = self.world.rng.uniform(0.0, ticket.timeout)

        def done() -> None:
            running = self.checker.running.get(self.id, [])
            if probe == "fleet" and generation in running:  # else it died with its agent
                running.remove(generation)
                self.checker.probe_ended(generation)
            if not self.alive:
                return
            error = LLMProviderUnavailable(SERVICE, "down")
            failure = None if healthy else Failure(error, Counts.FAILURE, grpc.StatusCode.UNAVAILABLE)
            self.executor.record(ticket, failure)
            self.executor.release(ticket)

        self.world.after(took, done)


class Checker:
    """I3, checked as the schedule runs."""

    def __init__(self, world: World, plane: Plane) -> None:
        self.world, self.plane = world, plane
        self.in_flight: dict[int, int] = {}
        self.saturated_at = -1e9  # last time the current HALF_OPEN had all its probes out
        self.asking_since: dict[str, tuple[int, float]] = {}
        #: Agent -> the generations of its probes running now.
        self.running: dict[str, list[int]] = {}
        self.violations: list[str] = []

    def holder_gone(self, agent: SimAgent) -> None:
        """A dead agent's probes are not in flight any more; a permit it held counts on
        until its hold has passed (as the probes at the limit, from its grant)."""
        for generation in self.running.pop(agent.id, []):
            self.probe_ended(generation)
        breaker = self.plane.engine.get(SERVICE)
        held = [*breaker._permits.get(agent.id, ()), *breaker._earlier.get(agent.id, ())]
        if held:
            # counted until the hold ends, a probe TTL past which an asker gets one (and
            # then a tick, the next grant's way to an agent asking, and that agent's next
            # call, which begins the probe: at 2 calls a second, the slowest caller here)
            ends = max(held) - PROBE_TTL_SECS
            self.saturated_at = max(self.saturated_at, ends + 0.02 + MAX_DELAY + 0.5)

    def _threshold(self) -> int:
        return self.plane.engine.get(SERVICE).policy.success_threshold

    def _limit(self) -> int:
        """Probes the current HALF_OPEN lets out at once now (one until one succeeded)."""
        return self.plane.engine.get(SERVICE).probe_limit()

    def probe_started(self, agent: SimAgent, generation: int) -> None:
        count = self.in_flight.get(generation, 0) + 1
        self.in_flight[generation] = count
        self.asking_since.pop(agent.id, None)
        if count > self._threshold():
            self.violations.append(
                f"t={self.world.now:.3f}: {count} probes of generation {generation} in flight"
            )
        if count >= self._limit():
            self.saturated_at = max(self.saturated_at, self.world.now)  # (a dead holder's may be later)

    def probe_ended(self, generation: int) -> None:
        if self.in_flight.get(generation, 0) >= self._limit():
            self.saturated_at = max(self.saturated_at, self.world.now)  # (a dead holder's may be later)
        self.in_flight[generation] -= 1

    def refused(self, agent: SimAgent) -> None:
        breaker = self.plane.engine.get(SERVICE)
        if breaker.state is not BreakerState.HALF_OPEN:
            self.asking_since.pop(agent.id, None)
            return
        generation, since = self.asking_since.get(agent.id, (breaker.generation, self.world.now))
        if generation != breaker.generation:
            since = self.world.now
        self.asking_since[agent.id] = (breaker.generation, since)
        started = max(since, breaker.changed_at, self.saturated_at)
        if self.world.now - started > PROBE_TTL_SECS:
            self.violations.append(
                f"t={self.world.now:.3f}: {agent.id} asked for a permit since {since:.3f} without one"
            )
            self.asking_since[agent.id] = (breaker.generation, self.world.now)


def run(seed: int, seconds: float = 30.0, skewed: bool = False) -> list[str]:
    """One seeded schedule; returns the invariant violations (empty when all held).
    ``skewed``: the engine's and each agent's wall clock up to :data:`SKEW_SECS` off (drawn
    apart from the schedule, which stays the same)."""
    world = World(seed)
    rng = world.rng
    policy = default_policy(
        SERVICE,
        failure_threshold=3,
        success_threshold=rng.randint(1, 3),
        wait_duration_secs=rng.uniform(0.3, 2.0),
        timeout_secs=rng.uniform(0.2, 3.0),
        rate_limit_requests=10**6,
        max_concurrent=10**6,
    )
    plane = Plane(world, lambda _: policy, random.Random(seed * 7919 + 1) if skewed else None)
    checker = Checker(world, plane)
    agents: list[SimAgent] = []
    end = world.now + seconds
    healthy = [False]

    def flip() -> None:
        healthy[0] = not healthy[0]
        world.after(rng.uniform(0.5, 8.0), flip)

    def join() -> None:
        agent = SimAgent(world, plane, f"agent-{len(agents)}", checker)
        agents.append(agent)
        rate = rng.choice([2.0, 10.0, 25.0])
        world.every(1.0 / rate, lambda: agent.call(healthy[0]), until=end)

    def churn() -> None:
        live = [a for a in agents if a.alive]
        roll = rng.random()
        if roll < 0.4 or len(live) < 2:
            join()
        elif live:
            victim = rng.choice(live)
            victim.alive = roll < 0.7  # leaves and comes back as a new process, or dies
            victim.cut()
            victim.alive = False
        world.after(rng.uniform(0.5, 6.0), churn)

    for _ in range(rng.randint(2, 5)):
        join()
    world.after(rng.uniform(0.5, 3.0), flip)
    world.after(rng.uniform(1.0, 5.0), churn)
    world.run(end)
    return checker.violations
