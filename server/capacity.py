"""Fleet-shared limits, leased out: the leader splits each period's capacity among the
agents (and follower replicas) that use it, by the demand each reported, and sends every
holder its lease for the next period half a period ahead.

Periods of ``lease_secs`` follow each other without gaps and a lease is valid for exactly
one period, so over any window of W seconds the fleet admits at most the limit plus one
period's share — without a network call per request. What keeps that true when agents
come and go and leaders change:

* periods are numbered by their start in milliseconds on the wall clock, so every leader
  cuts time the same way and a new one continues the numbering; leases carry the leader's
  epoch, and agents only move forward in (epoch, period); the running one is never leased;
  within an epoch the numbering never goes back, whatever the wall clock does (:mod:`.capacity_grid`);
* an agent without a lease spends its last one for at most the policy's
  ``unleased_secs``: what it may spend is kept out of the split (:mod:`.capacity_aside`)
  while it may be cut off, or, for a new leader, not back yet; a holder whose lease shrinks
  may miss the new one, so what it gives up goes to others a period later
  (:mod:`.capacity_split`); a changed policy keeps all that (:mod:`.capacity_state`);
* a leader leases no period ending after what it has recorded (``may_lease``), so a deposed
  leader that still sends cannot lease past what its successor keeps aside.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial

from mission_control.client.fleet_retries import (
    fleet_healthy,
    fleet_retry_units,
    metered_resources,
    retry_resources,
)
from mission_control.client.policy import UNLEASED_SECS, ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .capacity_aside import LeaderTerm, earlier_count
from .capacity_grid import PeriodGrid
from .capacity_relayed import counted_elsewhere, keep_predecessor, named, take_back
from .capacity_split import ASKED_PERIODS, asked_now, late_shrinks, per_agent_share, whole_units
from .capacity_state import Holder, LeasedLimit
from .lease_epoch import RECORD_AHEAD_SECS
from .unleased_claims import recent

_log = logging.getLogger("mission_control.server.capacity")

Send = Callable[[str, pb.ConnectResponse], bool]


class CapacityLeaser:
    """Leases out every fleet-shared limit.

    Args:
        policies: the policies in force (which resources are fleet-shared, how much).
        send: delivers a message to a connected holder; False when it is gone.
        epoch: the leader's epoch (rises with every new leader): a new one begins a term.
        lease_epoch: the epoch leases carry (None: ``epoch``); it may move above ``epoch``
            within a term (an agent held a higher one), and that begins no new term.
        clock: monotonic seconds; wall: epoch seconds (the period grid).
        leased_before: whether an earlier leader may have leased (agents not back yet may
            be spending its leases). Without it, only agents that report a lease are
            evidence of one.
        earlier_until: until when (wall seconds) an earlier leader may have leased, as its
            record said; None: not known (assume as far ahead as a leader records).
        may_lease: whether a period ending then (wall seconds) may be leased: within what
            this leader has recorded, fenced (and when the next round's period ends, to
            record that far ahead in time).
        on_leased: called after leases were sent.
        recorded_horizon: the longest horizon an earlier leader's agents may still hold for
            a limit (service, resource), as the epoch record says (0: none).
        earlier_epoch: the epoch the last earlier leader recorded, when this one took over
            (0: none known): an agent back holding a lease of a lower one does not know how
            many agents that leader leased.
    """

    def __init__(
        self,
        policies: Callable[[], Iterable[ServicePolicy]],
        send: Send,
        *,
        epoch: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        leased_before: Callable[[], bool] = lambda: False,
        earlier_until: Callable[[], float | None] = lambda: None,
        may_lease: Callable[[float, float], bool] = lambda end, then: True,
        on_leased: Callable[[], None] = lambda: None,
        recorded_horizon: Callable[[str, str], float] = lambda service, resource: 0.0,
        lease_epoch: Callable[[], int] | None = None,
        earlier_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.policies = policies
        self.send = send
        self.epoch = epoch
        self.lease_epoch = lease_epoch or epoch
        self.clock = clock
        self.wall = wall
        self.earlier_until = earlier_until
        self.may_lease = may_lease
        self.on_leased = on_leased
        self.recorded_horizon = recorded_horizon
        self.term = LeaderTerm(clock, leased_before, earlier_epoch)
        self.grid = PeriodGrid(clock, wall)
        self.limits: dict[tuple[str, str], LeasedLimit] = {}
        #: (limit, holder, units, the lease's other fields): made, not sent yet
        self._outbox: deque[tuple[LeasedLimit, str, float, pb.CapacityLease]] = deque()
        #: limits no policy names any more, until no agent may still spend under them
        self._put_aside: dict[tuple[str, str], tuple[LeasedLimit, float]] = {}

    def sync_policies(self) -> None:
        """Follow the policies: which resources are fleet-shared, and how much of each."""
        wanted: dict[tuple[str, str], tuple[float, float]] = {}
        retries: dict[tuple[str, str], ServicePolicy] = {}
        horizons: dict[tuple[str, str], float] = {}
        safe: dict[tuple[str, str], float] = {}
        for policy in self.policies():
            for resource, (units, period, _) in retry_resources(policy).items():
                wanted[(policy.service, resource)] = (units, period)
                retries[(policy.service, resource)] = policy
            if policy.fleet is None:
                continue
            for resource, (limit, window) in policy.fleet_resources().items():
                period = policy.fleet.lease_secs
                wanted[(policy.service, resource)] = (limit * period / window, period)
                horizons[(policy.service, resource)] = policy.fleet.unleased_secs
                if policy.fleet.safe_share is not None:
                    safe[(policy.service, resource)] = policy.fleet.safe_share * limit * period / window
        self._put_away([k for k in self.limits if k not in wanted])
        for key, (units, period) in wanted.items():
            limit = self._limit(key, units, period, horizons.get(key, UNLEASED_SECS))
            limit.safe_share_units = safe.get(key)
            policy = retries.get(key)
            limit.metered = policy is not None and key[1] in metered_resources(key[0])
            limit.retries_of = policy if policy is not None and not limit.metered else None

    def _limit(self, key: tuple[str, str], units: float, period: float, horizon: float) -> LeasedLimit:
        """The limit a policy names, as it is now: new, carried over from what it was (a
        policy changed, or deleted and put again while agents may still spend under it)."""
        found = self.limits.get(key)
        if found is None:
            earlier = self._put_aside.pop(key, None)
            if earlier is None or earlier[1] <= self.clock():
                found = self.limits[key] = LeasedLimit(key[0], key[1], units, period, unleased_secs=horizon)
            else:
                found = self.limits[key] = LeasedLimit.rebuilt(earlier[0], units, period, holders=False)
        elif found.period_secs != period:
            found = self.limits[key] = LeasedLimit.rebuilt(found, units, period, holders=True)
        elif found.retries_of is None:
            found.fleet_units = units
        found.recorded = partial(self.recorded_horizon, key[0], key[1])
        self.term.new_horizon(found, horizon)
        return found

    def _put_away(self, keys: list[tuple[str, str]]) -> None:
        """Limits no policy names any more. Agents cut off before they heard of that keep
        spending their last leases until their horizon: what is kept aside for them, and
        the horizons they may hold, come back if the policy is put again meanwhile."""
        now = self.clock()
        for key in keys:
            limit = self.limits.pop(key)
            ends = [until for _, until in (*limit.absent.values(), *limit.held_horizons)]
            ends.append(now + limit.unleased_secs + 2 * limit.period_secs + RECORD_AHEAD_SECS)
            self._put_aside[key] = (limit, max(ends))
        for key in [k for k, (_, until) in self._put_aside.items() if until <= now]:
            del self._put_aside[key]

    def hold_secs(self, service: str, resource: str) -> float | None:
        """How long a holder gone without a goodbye may still spend the limit: the longest
        horizon it may hold and the two periods its last lease may be ahead (None: no such
        fleet-shared limit)."""
        limit = self.limits.get((service, resource))
        if limit is None or limit.metered:
            return None
        return limit.horizon(self.clock()) + 2 * limit.period_secs

    def demand(self, holder: str, demand: pb.CapacityDemand) -> None:
        """What ``holder`` asked in its last period (or that it leaves)."""
        limit = self.limits.get((demand.service, demand.resource))
        if limit is None:
            return
        kept = limit.absent.pop(holder, None)
        limit.lapsed.pop(holder, None)
        fresh = holder not in limit.holders
        if demand.leaving:
            limit.holders.pop(holder, None)
            return
        entry = limit.holders.setdefault(holder, Holder())
        if kept is not None:
            # back after a break: its agents may spend their last leases until leases sent on
            # this stream replace them, and a new break before that keeps them aside again
            entry.carried = kept
        entry.used = _finite(demand.used)
        entry.agents = max(1, demand.agents)
        # (a follower that does not say what each agent wants: all alike)
        alike = (_finite(demand.wanted) / entry.agents,) * entry.agents
        wants = tuple(_finite(w) for w in demand.agents_wanted) or alike
        entry.asked = (*entry.asked[-(ASKED_PERIODS - 1) :], wants)
        entry.wants = asked_now(entry.asked)
        entry.wanted = sum(entry.wants)
        entry.replica = bool(demand.agents_wanted)
        if entry.replica:
            named(limit, entry, demand.counted, self.clock())
        entry.agents_known = demand.agents_known
        # a claim is believed only as far as the leader knows it: a client that claims the
        # whole fleet and goes without a goodbye must not keep it aside for H
        entry.claimed = min(_finite(demand.safe_units), limit.fleet_units)
        entry.safe_units = self.term.bound(limit, entry, self.clock()).believe(entry.claimed)
        if fresh and entry.replica:
            take_back(limit, holder, entry.claimed)
        if not entry.leased:
            entry.earlier, entry.counted = earlier_count(demand, entry)
            entry.earlier_units, entry.earlier_epoch = entry.safe_units, demand.held_epoch
            if not entry.replica and self.term.epoch and demand.held_epoch == self.lease_epoch():
                # it holds this leader's lease (passed on by a follower it left): split from
                # this pool already, and none of the agents back of the earlier count
                entry.earlier = entry.counted = 0
                entry.earlier_units = 0.0
        elif entry.replica and demand.held_epoch != self.lease_epoch():
            # a follower speaks for no more agents back than it has now: one that left it
            # (for another replica, where it is counted itself) is no longer one of them
            entry.counted = min(entry.counted, earlier_count(demand, entry)[1])

    def forget(self, holder: str) -> None:
        """The holder's stream ended: it may still spend its safe share (its last lease)
        until its horizon."""
        for limit in self.limits.values():
            self.term.set_absent(limit, holder)

    def relay_restarted(self, holder: str) -> None:
        """A new process of follower ``holder`` connected: see :func:`keep_predecessor`."""
        for limit in self.limits.values():
            if holder in limit.holders:  # the old process's stream has not ended here yet
                self.term.set_absent(limit, holder)
            keep_predecessor(limit, holder)

    def release_predecessors(self, name: str, keep: str) -> None:
        """Another process of agent id ``name`` is connected (``keep``): what the ones gone
        without a goodbye were held aside for is released at once. A process is keyed
        ``name@instance`` (or ``name``, one without instance); a new instance is a restart,
        and a live twin's stream that breaks is taken for one (it may then overspend its last
        lease until it is back)."""
        mine = f"{name}@"
        for limit in self.limits.values():
            for holder in [h for h in limit.absent if h != keep and (h == name or h.startswith(mine))]:
                del limit.absent[holder]

    def tick(self, *, send: bool = True) -> None:
        """Lease the next period of every limit once the running one is half over (and
        send the leases, unless ``send`` is False: :meth:`send_queued` sends them then)."""
        now, epoch = self.clock(), self.epoch()
        wall = self.grid.now(epoch)
        if epoch != self.term.epoch:  # leading anew: agents may be spending safe shares
            self.term.begin(epoch, self.earlier_until(), wall, self.limits.values())
        for limit in list(self.limits.values()):
            index = math.floor(wall / limit.period_secs)
            into = wall - index * limit.period_secs
            ends = (index + 2) * limit.period_secs
            half = into >= limit.period_secs / 2 and limit.allocated <= index
            if half and self.may_lease(ends, ends + limit.period_secs):
                self._allocate(limit, index + 1, now, wall)
        if send:
            self.send_queued()

    def _allocate(self, limit: LeasedLimit, index: int, now: float, wall: float) -> None:
        limit.allocated = index
        if not limit.holders:
            return
        if limit.metered:  # a fleet retry budget's calls: counted, not leased
            limit.used = limit.demanded = sum(e.used for e in limit.holders.values())
            return
        if limit.retries_of is not None:
            limit.fleet_units = self._fleet_retries(limit, limit.retries_of)
        shares = self._split(limit, index, now)
        limit.leased = sum(shares.values())
        # every agent that may be spending: those leased now and those cut off
        agents = sum(e.agents for e in limit.holders.values()) + len(limit.absent)
        if limit.warm:
            # and those the last earlier leader counted that are not back (a new agent back
            # does not stand for one of them: a successor must not take this count for all)
            agents = max(agents + self.term.not_back(limit), limit.expected)
            if not self.term.count_known(limit):
                # an agent of the earlier leader may not be back: one more than it knows
                # of, so that a successor does not take this count for the whole fleet
                agents += 1
        start = index * limit.period_secs
        # every holder's lease differs only in its units: copy one (cheaper than building
        # 10,000 messages field by field)
        template = pb.CapacityLease(
            service=limit.service,
            resource=limit.resource,
            period=round(start * 1000),
            agents=agents,
            fleet_units=limit.fleet_units,
            epoch=self.lease_epoch() if self.term.epoch else 0,
        )
        template.starts_in.FromNanoseconds(int(max(0.0, start - wall) * 1e9))
        template.period_length.FromNanoseconds(int(limit.period_secs * 1e9))
        for holder, units in shares.items():
            entry = limit.holders[holder]
            entry.sent, entry.leased, entry.recent = units, True, recent(entry.recent, units)
            self._outbox.append((limit, holder, units, template))

    def _fleet_retries(self, limit: LeasedLimit, policy: ServicePolicy) -> float:
        """A fleet retry budget's retries for the next period, from the fleet's last one."""
        calls, failures = (self._fleet_used(limit.service, r) for r in metered_resources(limit.service))
        attempts = calls + sum(e.used for e in limit.holders.values())
        limit.retries_healthy = fleet_healthy(attempts, failures, limit.retries_healthy)
        return fleet_retry_units(policy, calls, limit.retries_healthy)

    def _fleet_used(self, service: str, resource: str) -> float:
        metered = self.limits.get((service, resource))
        return sum(e.used for e in metered.holders.values()) if metered is not None else 0.0

    def _split(self, limit: LeasedLimit, index: int, now: float) -> dict[str, float]:
        """Each holder's units for period ``index``."""
        pool = self.term.pool(limit, now)
        limit.demanded = sum(e.wanted for e in limit.holders.values())
        limit.used = sum(e.used for e in limit.holders.values())
        shares = per_agent_share(pool, {h: e.wants or (e.wanted,) for h, e in limit.holders.items()})
        whole = limit.resource == f"{limit.service}.requests" or limit.retries_of is not None
        if whole:  # whole units
            shares = whole_units(shares, index)
        # a holder that misses this lease goes on with its last one: shrinks count in
        # full for one more period
        # (a follower's agents may spend what they last had, and those gone from it what it
        # keeps for them: its units without a lease)
        last = {
            h: max(e.sent, e.safe_units if not e.sent or e.replica else 0.0, e.still_carried(now))
            for h, e in limit.holders.items()
        }
        return late_shrinks(shares, last, pool, whole)

    @property
    def queued(self) -> int:
        """Leases the last :meth:`tick` made that are not sent yet."""
        return len(self._outbox)

    def send_queued(self, most: int | None = None) -> None:
        """Send the leases made and not sent yet (``most`` of them; None: all)."""
        outbox, delivered = self._outbox, False
        for _ in range(len(outbox) if most is None else min(most, len(outbox))):
            limit, holder, units, template = outbox.popleft()
            message = pb.ConnectResponse()
            message.lease.CopyFrom(template)
            message.lease.units = units
            entry = limit.holders.get(holder)
            if entry is not None and entry.named_at:
                message.lease.counted_elsewhere.extend(counted_elsewhere(limit, holder))
            if self.send(holder, message):
                delivered = True
            else:  # no stream: it may be cut off, spending its last lease
                self.term.set_absent(limit, holder)
        if delivered:
            self.on_leased()

    def minimum_withheld(self) -> list[str]:
        """Services whose fleet retry budget leases no minimum now (the fleet failing)."""
        return sorted(
            limit.service for limit in self.limits.values() if limit.retries_of and not limit.retries_healthy
        )

    def usage(self) -> list[pb.FleetLimitUsage]:
        """Each fleet limit's figures for ``stats`` (a metered one has none)."""
        return [limit.usage() for limit in self.limits.values() if not limit.metered]


def _finite(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0
