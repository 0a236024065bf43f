"""A follower's part of the fleet leases: what its agents want goes up to the leader (one
demand speaking for all of them), and the lease the leader sends back is split among them.

An agent whose stream here ends without a goodbye may be alive and cut off (or behind a
replica that reaches no leader), spending its last lease until its horizon. The leader
keeps that aside for an agent connected to it (``CapacityLeaser.forget``); for an agent
behind a follower only the follower knows, so the follower keeps it: until the horizon has
passed (the policy's ``unleased_secs`` and the two periods its last lease may be ahead) it
still counts the agent in its demand, wanting what it may spend, and in the units it may
spend without a lease; and it hands that much of each lease to nobody. The agents here
share the rest. A holder that says goodbye, comes back here, or that the leader says it
counts elsewhere (``CapacityLease.counted_elsewhere``: connected to the leader, or named by
another follower's demand as one whose demand, with what it may spend unleased, that demand
includes) is not kept; one connected to a replica no leader counts (cut off from the
leader) stays kept. Nor is one kept counted as back of an earlier leader's count (it may
be back elsewhere). Each demand names the agents connected here whose demands it includes
(``CapacityDemand.counted``): the leader releases what it kept for one of them only then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mission_control.client.fleet_limits import fair_share
from mission_control.client.fleet_retries import retries_resource
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .capacity_grid import ForwardWall
from .capacity_split import whole_units
from .lease_epoch import claim_in_range
from .relay_reserve import LeaseTerms, Spend, terms
from .relayed_agents import MAX_RELAYED_AGENTS

#: (service, resource) of a fleet-shared limit.
Limit = tuple[str, str]
#: An agent reports its demand every period it spends: one not heard from for this many of
#: the longest periods it was leased in may not hear its leases either (its link held)
SILENT_PERIODS = 2


@dataclass(frozen=True, slots=True)
class _Kept:
    """An agent gone without a goodbye: what it may spend a period, and until when; and the
    epoch of the lease it said it held, with the agent count it heard (as its last demand)."""

    units: float
    until: float
    epoch: int = 0
    known: int = 0
    #: what it may spend, each in the terms of a lease (the largest reserve is kept)
    spends: tuple[Spend, ...] = ()

    def reserve(self, lease: pb.CapacityLease, now: float) -> float:
        """What of ``lease`` is handed to nobody for it (``server/relay_reserve.py``)."""
        if not self.spends:
            return self.units
        return max(spend.reserve(lease, now, self.until) for spend in self.spends)


class FollowerLeases:
    """Demands of this replica's agents, leases for them, and what is kept for those gone.

    Args:
        hold_secs: how long an agent gone without a goodbye may spend a limit (its
            horizon and two periods; None: not a fleet-shared limit here).
        clock: monotonic seconds.
        wall: epoch seconds (with ``clock``, what agents' epoch claims are bounded on).
    """

    def __init__(
        self,
        hold_secs: Callable[[str, str], float | None],
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.hold_secs = hold_secs
        self.clock = clock
        self.now = ForwardWall(clock, wall)
        #: limit -> agent -> its last demand, and when it came
        self.demands: dict[Limit, dict[str, pb.CapacityDemand]] = {}
        self._heard: dict[Limit, dict[str, float]] = {}
        #: limit -> agent -> the last lease passed on to it, in its terms
        self._sent: dict[Limit, dict[str, Spend]] = {}
        #: limit -> the terms of the leases passed on to each agent lately
        self._terms: dict[Limit, LeaseTerms] = {}
        #: limit -> agent gone without a goodbye -> what is kept for it
        self.kept: dict[Limit, dict[str, _Kept]] = {}
        self._dirty = False
        #: Limits the last report spoke for (one emptied since is reported as left).
        self._reported: set[Limit] = set()

    def demand(self, agent_id: str, demand: pb.CapacityDemand) -> None:
        limit = (demand.service, demand.resource)
        per_agent = self.demands.setdefault(limit, {})
        self.kept.get(limit, {}).pop(agent_id, None)
        if demand.leaving:
            per_agent.pop(agent_id, None)
            self._heard.get(limit, {}).pop(agent_id, None)
            self._sent.get(limit, {}).pop(agent_id, None)
            self._terms.setdefault(limit, LeaseTerms()).forget(agent_id)
        else:
            per_agent[agent_id] = demand
            self._heard.setdefault(limit, {})[agent_id] = self.clock()
        self._dirty = True

    def agent_left(self, agent_id: str) -> None:
        """``agent_id``'s stream ended (a goodbye came first as a leaving demand)."""
        now = self.clock()
        for limit, per_agent in self.demands.items():
            last = per_agent.pop(agent_id, None)
            self._heard.get(limit, {}).pop(agent_id, None)
            sent = self._sent.get(limit, {}).pop(agent_id, Spend(0.0))
            seen = self._terms.setdefault(limit, LeaseTerms())
            if last is None:
                seen.forget(agent_id)
                continue
            self._dirty = True
            units, hold = max(last.safe_units, sent.units), self.hold_secs(*limit)
            spends = seen.gone(agent_id, last.safe_units, sent, now - (hold or 0.0))
            if units > 0 and hold is not None:
                kept = _Kept(units, now + hold, last.held_epoch, last.agents_known, spends)
                self.kept.setdefault(limit, {})[agent_id] = kept

    def release_predecessors(self, name: str, keep: str) -> None:
        """A process of agent id ``name`` is connected (``keep``): one gone without a
        goodbye was its predecessor (a restart), not an agent cut off."""
        mine = f"{name}@"
        for kept in self.kept.values():
            for agent_id in [a for a in kept if a != keep and (a == name or a.startswith(mine))]:
                del kept[agent_id]
                self._dirty = True

    @property
    def dirty(self) -> bool:
        """Whether the demand changed since the last report (a kept agent's horizon passed too)."""
        if self._dirty:
            return True
        now = self.clock()
        return any(k.until <= now for kept in self.kept.values() for k in kept.values())

    def _kept_now(self, limit: Limit) -> dict[str, _Kept]:
        kept = self.kept.get(limit, {})
        now = self.clock()
        for agent_id in [a for a, k in kept.items() if k.until <= now]:
            del kept[agent_id]  # past its horizon: if still cut off, it refuses by now
        return kept

    def counted_elsewhere(self, lease: pb.CapacityLease) -> None:
        """The leader counts these agent processes through another holder now, with what
        they may spend unleased: one kept here is not kept twice."""
        kept = self.kept.get((lease.service, lease.resource), {})
        for agent_id in lease.counted_elsewhere:
            if kept.pop(agent_id, None) is not None:
                self._dirty = True

    def report(self) -> pb.ConnectRequest | None:
        """One demand per limit for all the agents here (the ones kept too), or None. A
        limit nobody here shares any more is reported once as left: the leader leases this
        replica nothing more of it."""
        demands, reported = [], set()
        for limit in sorted(set(self.demands) | set(self.kept) | self._reported):
            per_agent, kept = self.demands.get(limit, {}), self._kept_now(limit)
            if not per_agent and not kept:
                if limit in self._reported:
                    demands.append(pb.CapacityDemand(service=limit[0], resource=limit[1], leaving=True))
                continue
            reported.add(limit)
            wants = [max(0.0, d.wanted) for d in per_agent.values()] + [k.units for k in kept.values()]
            held = self._held_epoch(d.held_epoch for d in per_agent.values())
            # the agents here holding a lease of that epoch, and the counts they heard: a new
            # leader counts only those as back of the earlier count
            of_held = [
                d.agents_known for d in per_agent.values() if d.agents_known and d.held_epoch in (0, held)
            ]
            # (one kept is not back: cut off, or connected elsewhere and counted there; what it
            # may spend is kept aside here, whether it is ever back or not)
            demands.append(
                pb.CapacityDemand(
                    service=limit[0],
                    resource=limit[1],
                    wanted=sum(wants),
                    used=sum(max(0.0, d.used) for d in per_agent.values()),
                    agents=len(wants),
                    agents_known=max((d.agents_known for d in per_agent.values()), default=0),
                    safe_units=sum(max(0.0, d.safe_units) for d in per_agent.values())
                    + sum(k.units for k in kept.values()),
                    leased=all(d.leased for d in per_agent.values()),
                    agents_wanted=wants,
                    held_epoch=held,
                    agents_held=len(of_held),
                    held_known=max(of_held, default=0),
                    # (those kept are not named: two replicas keeping one agent must not
                    # let each other go)
                    counted=sorted(per_agent)[:MAX_RELAYED_AGENTS],
                )
            )
        self._dirty, self._reported = False, reported
        if not demands:
            return None
        return pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=demands))

    def _held_epoch(self, claims: Iterable[int]) -> int:
        """The highest of the agents' epoch claims the leader may take: one out of range
        (which the leader refuses) must not hide another agent's."""
        now = self.now()
        return max((held for held in claims if claim_in_range(held, now)), default=0)

    def split(self, lease: pb.CapacityLease) -> list[tuple[str, pb.CapacityLease]]:
        """The leader's lease for this replica, split among the agents here (after what is
        kept for the agents gone), as (agent, its lease): a request limit (or a fleet retry
        budget) in whole calls, as the leader splits it, the units left over by rounding
        going to the largest fractions, in turns period by period."""
        limit = (lease.service, lease.resource)
        per_agent = self.demands.get(limit, {})
        now = self.clock()
        self.counted_elsewhere(lease)
        kept = sum(k.reserve(lease, now) for k in self._kept_now(limit).values())
        silent = self._silent(limit, lease, now)
        pool = max(0.0, lease.units - kept - sum(silent.values()))
        whole = lease.resource in (f"{lease.service}.requests", retries_resource(lease.service))
        if whole:
            pool = math.floor(pool + 1e-9)
        shares = fair_share(pool, {a: d.wanted for a, d in per_agent.items() if a not in silent})
        if whole:
            shares = whole_units(shares, lease.period)
        for agent_id, units in silent.items():  # (what it gets, should it hear again)
            shares[agent_id] = math.floor(units + 1e-9) if whole else units
        sent, seen = self._sent.setdefault(limit, {}), self._terms.setdefault(limit, LeaseTerms())
        period, rate = terms(lease)
        out = []
        for agent_id, units in shares.items():
            mine = pb.CapacityLease()
            mine.CopyFrom(lease)
            mine.units = units  # the leader counted this replica's agents in lease.agents
            sent[agent_id] = Spend(units, period, rate)
            seen.sent(agent_id, lease, now)
            out.append((agent_id, mine))
        return out

    def _silent(self, limit: Limit, lease: pb.CapacityLease, now: float) -> dict[str, float]:
        """What of ``lease`` to hold for each agent here not heard from lately: its link may
        be held (its stream not broken yet), so it hears no lease and spends the last one it
        heard, in the terms it heard, until its horizon — as one gone without a goodbye
        (``server/relay_reserve.py``). After a shorter period its share of each new lease
        is less than it spends so in a window; nobody else may be leased the rest."""
        hold = self.hold_secs(*limit)
        if hold is None:
            return {}
        heard, seen = self._heard.get(limit, {}), self._terms.get(limit)
        out = {}
        for agent_id, demand in self.demands.get(limit, {}).items():
            at = heard.get(agent_id)
            if at is None or demand.safe_units <= 0 or seen is None:
                continue
            spend = seen.widest(agent_id, demand.safe_units, at - hold)
            if spend.period <= 0 or now - at <= SILENT_PERIODS * spend.period or now >= at + hold:
                continue  # (past its horizon it spends nothing if still cut off)
            out[agent_id] = spend.reserve(lease, now, at + hold)
        return out
