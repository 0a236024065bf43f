"""I3 and I4 in the simulated fleet: probe permits and fleet-limit leases, checked while a
schedule runs (I3) and once it is over (I4).

I3  Never more than ``success_threshold`` probes of one breaker in flight fleet-wide, over
    every generation since it last left CLOSED (a probe of a HALF_OPEN that is over runs on
    beside the next one's, whatever ended it: a failed probe, a state read from etcd);
    an agent that keeps asking gets a permit within one probe TTL (``PROBE_TTL_SECS``,
    plus one push) while the fleet is settled and the probes in flight are below the
    limit, nor filled by permits the leader keeps for holders whose stream to it ended
    (killed, cut off, or a follower's relay gone), or a follower for its agents whose stream
    to it ended, until their hold passes — from when its
    replica reaches the leader (a follower's relay linked, or a
    retry after the path to the leader opened: a heal shorter than the relay's retry
    interval may pass unseen, and a permit comes only over that link); after a leader
    change, for a HALF_OPEN from before it, only once the probe TTL plus the policy's
    timeout have passed since (the new leader's wait); no permit is used, or held by a
    control plane, past its TTL.
    A probe is in flight from the permit being taken until its outcome is recorded, for
    as long as its agent lives: a stream that breaks does not end a probe under one of its
    permits, which the control plane keeps counting until the agent, back, said what it
    runs (``FleetBreakers.holder_said``, ``server/relay_permits.py``) or the permit's hold
    has passed.
I4  In every window of the shared limit, the units all agents admitted (dead ones too)
    are at most the limit plus one lease period's units — across restarts, failovers,
    wipes and agents cut off for a while.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import PROBE_TTL_SECS

if TYPE_CHECKING:
    from .schedule import World
    from .world import Agent, Replica

#: The fleet-shared limit every agent spends: LIMIT units per WINDOW seconds.
SHARED, LIMIT, WINDOW = "svc-shared", 30, 2.0
#: One push and a settling fleet (as in I1), on top of the probe TTL.
SLACK_SECS = 2.0
#: How a violation of I3 across a leader change begins (fixed; schedules 85, 108, …): a
#: new leader took over a HALF_OPEN without the permits the one before granted (they live
#: in its memory) and granted them again; or, while two replicas both led for a moment
#: (one deposed, not knowing it yet), both granted.
FAILOVER = "(permits of more than one leader) "
#: An agent still asks when it was refused for want of a permit this recently.
ASKING_NOW_SECS = 0.5
#: A follower's relay tries the leader again at least this often (``server/relay.py``): a
#: partition healed for less may be missed, and a permit can reach an agent on a follower
#: only over that link.
RELAY_RETRY_SECS = 1.0


@dataclass
class _Probe:
    agent: Agent
    service: str
    generation: int
    epoch: int
    #: The replica leading when the permit reached the agent (the one that granted it).
    leader: str | None
    started: float = 0.0


def worst_window(times: list[float], window: float) -> int:
    """The most admissions in any window of ``window`` seconds."""
    return worst_span(times, window)[0]


def worst_span(times: list[float], window: float) -> tuple[int, float]:
    """The most admissions in any window of ``window`` seconds, and when that window ends."""
    times = sorted(times)
    worst, end, j = 0, 0.0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        if i - j + 1 > worst:
            worst, end = i - j + 1, t
    return worst, end


class ProbeWatch:
    """What I3 needs to know: probes running, grants received, agents asking."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.running: dict[int, _Probe] = {}
        self._ids = itertools.count()
        #: (agent, service, generation) -> when grants for it reached the agent
        self.grants: dict[tuple[str, str, int], list[tuple[float, str | None]]] = {}
        #: (agent, service) -> (generation, asking since, asked last)
        self.asking: dict[tuple[str, str], tuple[int, float, float]] = {}
        #: (service, generation) -> the leaders whose permits reached agents
        self.granters: dict[tuple[str, int], set[str | None]] = {}
        self.saturated_at: Counter[str] = Counter()
        #: When the leading replica (or the relay of a replica) last changed.
        self.leader_since = 0.0
        self._leader: str | None = None
        self.relay_since: Counter[str] = Counter()
        self._relayed: dict[str, bool] = {}
        #: When the network path from a replica to the leader last opened or closed.
        self.path_since: Counter[str] = Counter()
        self._path: dict[str, bool] = {}
        self.stats: Counter[str] = Counter()
        #: (replica instance, breaker) -> (policy timeout at a grant, until when that
        #: permit may be held): an operator may lower the timeout while one is held.
        self.granted_under: dict[tuple[str, str], list[tuple[float, float]]] = {}
        #: When a leading replica last held each breaker CLOSED: a probe begun before
        #: belongs to a run that is over (CLOSED lets every call through).
        self.closed_at: dict[str, float] = {}

    def changed(self, replica: Replica, breaker: pb.Breaker) -> None:
        """A replica's breaker changed (decided there or read from the store)."""
        if breaker.state == pb.BREAKER_STATE_CLOSED and replica.plane.leading:
            self.closed_at[breaker.name] = self.world.now

    def granting(self, replica: Replica, service: str) -> None:
        """``replica`` grants a permit of ``service`` (under the policy's timeout now)."""
        breaker = replica.plane.breakers.find(service)
        if breaker is None:
            return
        now, key, timeout = self.world.now, (replica.instance, service), breaker.policy.timeout_secs
        kept = [(t, until) for t, until in self.granted_under.get(key, []) if until > now]
        self.granted_under[key] = [*kept, (timeout, now + PROBE_TTL_SECS + timeout)]

    def _violation(self, key: tuple[str, str], text: str) -> None:
        self.world.recorder.violation("I3", key, text)

    # -- what the agents do --------------------------------------------------------

    def granted(self, agent: Agent, service: str, generation: int) -> None:
        leading = self._leading()
        leader = leading.instance if leading is not None else None
        self.grants.setdefault((agent.name, service, generation), []).append((self.world.now, leader))
        self.granters.setdefault((service, generation), set()).add(leader)
        self.stats["probe_grants"] += 1

    def refused(self, agent: Agent, service: str, generation: int) -> None:
        now = self.world.now
        held = self.asking.get((agent.name, service))
        since = held[1] if held is not None and held[0] == generation else now
        self.asking[(agent.name, service)] = (generation, since, now)

    def started(self, agent: Agent, service: str, generation: int) -> int:
        """A probe starts under a permit: returns its id for :meth:`ended`."""
        now = self.world.now
        self.asking.pop((agent.name, service), None)
        self.stats["probes"] += 1
        received = [
            (t, leader)
            for t, leader in self.grants.get((agent.name, service, generation), [])
            if now - t <= PROBE_TTL_SECS + 1e-6
        ]
        if not received:
            self._violation(
                (agent.name, f"{service}/ttl"),
                f"{agent.name} probes {service} gen {generation} past its permit's TTL",
            )
        probe_id = next(self._ids)
        leader = received[-1][1] if received else None
        self.running[probe_id] = _Probe(agent, service, generation, agent.epoch, leader, now)
        flying = self._flying(service)
        count = len(flying)
        threshold = self.world.success_thresholds[service]
        if count > threshold:
            leaders = {p.leader for p in flying if p.generation == generation}
            leaders |= self.granters.get((service, generation), set())
            earlier = sum(1 for p in flying if p.generation != generation)
            self._violation(
                (service, f"gen {generation}"),
                (FAILOVER if len(leaders) > 1 or None in leaders else "")
                + f"{count} probes of {service} gen {generation} in flight"
                + (f" ({earlier} of other generations)" if earlier else "")
                + f" (success_threshold {threshold})",
            )
        self._saturation(service)
        return probe_id

    def ended(self, probe_id: int) -> None:
        probe = self.running.pop(probe_id, None)
        if probe is not None:
            self._saturation(probe.service, ending=True)

    def _flying(self, service: str, generation: int | None = None) -> list[_Probe]:
        """Probes of ``service`` in flight: of ``generation``, or of every generation
        since the breaker last left CLOSED."""
        closed = self.closed_at.get(service, float("-inf"))
        return [
            p
            for p in self.running.values()
            if p.service == service
            and (p.generation == generation if generation is not None else p.started > closed)
            and p.agent.alive
        ]

    def _in_flight(self, service: str) -> int:
        """Probes holding the limit: earlier generations' count too (as the engine's)."""
        return len(self._flying(service))

    def _saturation(self, service: str, ending: bool = False) -> None:
        leader = self._leading()
        breaker = leader.plane.breakers.find(service) if leader is not None else None
        limit = breaker.probe_limit() if breaker is not None else 1
        if self._in_flight(service) + (1 if ending else 0) >= limit or (
            leader is not None and breaker is not None and self._kept_for_gone(leader, breaker) >= limit
        ):
            self.saturated_at[service] = self.world.now  # type: ignore[assignment]

    def _kept_for_gone(self, leader: Replica, breaker) -> int:  # type: ignore[no-untyped-def]
        """Permits the leader counts for holders with no stream to it now: a holder killed
        or cut off, or a follower's relay that went (its agents may use what it handed
        them), may still run a probe under one, so each counts until its hold (TTL + the
        policy's timeout) has passed (``FleetBreakers.release_agent``): the limit they fill
        is not free before, though no probe may be in flight."""
        now = self.world.now
        hub = leader.plane.hub
        gone = sum(
            sum(1 for expiry in expiries if expiry > now)
            for kept in (breaker._permits, breaker._earlier, breaker._gone)
            for holder, expiries in kept.items()
            if kept is breaker._gone or not hub.streams_of(holder)
        )
        return gone + self._kept_by_relays(leader, breaker)

    def _kept_by_relays(self, leader: Replica, breaker) -> int:  # type: ignore[no-untyped-def]
        """Permits a follower's relay, still linked to the leader, keeps out for agents whose
        stream to it ended while they held them (``relay_permits``: kept until the agent says
        its probe ended, there, or until the hold lapses): the leader holds each for the
        relay. The agent's probe may have ended long before (cut off, or moved to another
        replica, it could not say so there), but no replica can know: the limit is full."""
        now = self.world.now
        kept = 0
        for replica in self.world.alive_replicas():
            relay = replica.plane.relay
            if replica is leader or relay is None:
                continue
            lost = sum(
                1
                for permits in relay.permits._held.get(breaker.name, {}).values()
                for permit in permits.values()
                if permit.lost and not permit.released and permit.expiry > now
            )
            holding = breaker._permits.get(f"replica.{replica.instance}", ())
            kept += min(lost, sum(1 for expiry in holding if expiry > now))
        return kept

    # -- sampled -------------------------------------------------------------------

    def _leading(self) -> Replica | None:
        leaders = [r for r in self.world.alive_replicas() if r.plane.leading]
        return leaders[0] if len(leaders) == 1 else None

    def sample(self, settled) -> None:  # type: ignore[no-untyped-def]
        """Check I3's TTL and liveness parts; ``settled(agent, now)`` says whether the
        agent's link and replica have been healthy for a push (I1's condition)."""
        world = self.world
        now = world.now
        self._topology(now)
        for replica in world.alive_replicas():
            self._holds_expire(replica, now)
        leader = self._leading()
        for (agent_name, service), (generation, since, last) in list(self.asking.items()):
            if now - last > ASKING_NOW_SECS:
                del self.asking[(agent_name, service)]
                continue
            agent = next(a for a in world.agents if a.name == agent_name)
            if leader is None or not agent.alive or not settled(agent, now):
                continue
            breaker = leader.plane.breakers.find(service)
            if breaker is None or breaker.state is not BreakerState.HALF_OPEN:
                continue
            if breaker.generation != generation:
                continue
            self._saturation(service)  # a long probe may hold the limit still
            replica = agent.replica
            assert replica is not None
            took_over = self.leader_since
            # the permits of a leader before may be in use: of this HALF_OPEN, or of one of
            # its own that etcd never had (of a breaker not CLOSED at the takeover)
            held = leader.plane.breakers.held_since(service)
            # (or of a HALF_OPEN it adopted from the store while leading: granted elsewhere)
            took_over = max(took_over, leader.plane.breakers._adopted.get(service, took_over))
            if breaker.changed_at <= took_over or held is not None:
                # the new leader's wait: the TTL plus the highest timeout a permit of the
                # leader before may have been granted under (a lowered one counts a while)
                since = max(took_over, held or took_over)
                took_over = since + leader.plane.breakers.takeover_hold(service, since)
            start = max(
                since,
                breaker.changed_at,
                self.saturated_at[service],
                took_over,
                self.relay_since[replica.name],
            )
            if not self._relayed.get(replica.instance):
                # cut from the leader, no permit can reach the agent: once the path opens,
                # the relay's next try links it
                if not self._path.get(replica.name):
                    continue
                start = max(start, self.path_since[replica.name] + RELAY_RETRY_SECS)
            if now - start > PROBE_TTL_SECS + SLACK_SECS:
                self._violation(
                    (agent_name, f"{service}/asking"),
                    f"{agent_name} asked for a permit of {service} gen {generation} "
                    f"since {since:.2f} through {replica.instance} without one",
                )
                self.asking[(agent_name, service)] = (generation, now, now)

    def _topology(self, now: float) -> None:
        leader = self._leading()
        instance = leader.instance if leader is not None else None
        if instance != self._leader:
            self._leader, self.leader_since = instance, now
        for replica in self.world.alive_replicas():
            relay = replica.plane.relay
            linked = replica.plane.leading or (relay is not None and relay.connected)
            if self._relayed.get(replica.instance) != linked:
                self._relayed[replica.instance] = linked
                self.relay_since[replica.name] = now  # type: ignore[assignment]
            path = leader is not None and frozenset((replica.name, leader.name)) not in self.world.partitions
            if self._path.get(replica.name) != path:
                self._path[replica.name] = path
                self.path_since[replica.name] = now  # type: ignore[assignment]

    def _holds_expire(self, replica: Replica, now: float) -> None:
        for name in replica.plane.breakers.names():
            breaker = replica.plane.breakers.find(name)
            if breaker is None:
                continue
            # held for the TTL, and for the probe call the agent may start at its end (under
            # the policy's timeout at the grant: one lowered since does not cut the hold)
            granted = self.granted_under.get((replica.instance, name), ())
            timeout = max([breaker.policy.timeout_secs, *(t for t, until in granted if until > now - 0.3)])
            longest = PROBE_TTL_SECS + timeout
            for holder, expiries in breaker._permits.items():
                if any(t < now - 0.3 or t > now + longest + 1e-6 for t in expiries):
                    self._violation(
                        (replica.instance, f"{name}/hold"),
                        f"{replica.instance} holds a permit of {name} for {holder} until "
                        f"{max(expiries):.2f} (the longest hold: {longest:g}s)",
                    )


class Admissions:
    """I4: when each agent admitted a unit of the shared limit."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.times: list[float] = []
        self.by_agent: Counter[str] = Counter()
        #: Calls made while the agent knew no fleet limit (before its first snapshot, or
        #: after a wipe no replica could restore the policy from).
        self.unlimited = 0
        #: How often an agent was cut off from every replica.
        self.cut_off = 0
        #: (when, what): admissions and leases of the shared limit, for :meth:`timeline`.
        self.log: list[tuple[float, str]] = []

    def admitted(self, agent: Agent) -> None:
        self.times.append(self.world.now)
        self.by_agent[agent.name] += 1
        for budget in agent.view.get(SHARED).leased.values():
            running = budget._now
            lease = running.lease
            under = (
                f"lease ({lease.epoch}, {lease.period})"
                if lease
                else f"no lease (last {budget.last_units:g})"
            )
            self._note(agent, f"admits under {under}, {running.left:g} left, horizon {budget.horizon:.2f}")

    def leased(self, agent: Agent, lease: pb.CapacityLease) -> None:
        """A lease of the shared limit reached ``agent``."""
        if lease.service == SHARED:
            starts = lease.starts_in.ToNanoseconds() / 1e9
            self._note(
                agent, f"leased {lease.units:g} for ({lease.epoch}, {lease.period}) from +{starts:.3f}"
            )

    def _note(self, agent: Agent, text: str) -> None:
        via = agent.replica.instance if agent.replica is not None else "no replica"
        self.log.append((self.world.now, f"{agent.name} [{via}] {text}"))

    def timeline(self) -> list[str]:
        """What happened in the worst window (and the period before it): admissions, the
        leases agents received, and the schedule's events."""
        worst, end = worst_span(self.times, WINDOW)
        start = end - WINDOW - self.world.lease_secs
        lines = [(t, f"{t:9.3f} {text}") for t, text in self.log if start <= t <= end]
        for event in self.world.result.events:
            when = float(event.split(maxsplit=1)[0])
            if start - 5.0 <= when <= end:
                lines.append((when, f"{event}  (event)"))
        header = f"the worst {WINDOW:g} s window: ({end - WINDOW:.3f}, {end:.3f}], {worst} admitted"
        return [header, *(text for _, text in sorted(lines, key=lambda line: line[0]))]

    def check(self) -> None:
        world = self.world
        units = LIMIT * world.lease_secs / WINDOW
        worst = worst_window(self.times, WINDOW)
        world.result.stats["shared_admitted"] += len(self.times)
        world.result.stats["shared_unlimited"] += self.unlimited
        world.result.stats["shared_worst_window"] = max(world.result.stats["shared_worst_window"], worst)
        if worst > LIMIT + units + 1e-9:
            world.result.violations.append(
                "I4: " + f"{worst} admitted in one {WINDOW:g} s window "
                f"(limit {LIMIT} + one period's {units:g}; period {world.lease_secs:g} s)"
            )
            world.result.timeline = self.timeline()
