"""Fleet-shared limits, leased out: the leader splits each period's capacity among the
agents (and follower replicas) that use it, by the demand each reported, and sends every
holder its lease for the next period half a period ahead.

Periods of ``lease_secs`` follow each other without gaps and a lease is valid for exactly
one period, so over any window of W seconds the fleet admits at most the limit plus one
period's share — without a network call per request. What keeps that true when agents
come and go and leaders change:

* periods are numbered by their start in milliseconds on the wall clock, so every leader
  cuts time the same way and a new one continues the numbering; leases carry the leader's
  epoch, and agents only move forward in (epoch, period);
* the period running now is never leased again, only the ones ahead;
* an agent without a lease spends its last one (it reports how much), for at most the
  policy's ``unleased_secs`` after its last leased period began. That is kept out of the
  split for a holder whose stream broke without a goodbye (it may be alive and cut off)
  until it is back or that horizon has passed; a holder whose lease shrinks may miss the
  new one, so what it gives up goes to others a period later; and a new leader, while
  agents an earlier one counted are not back, splits only what the agents back were
  spending — until the horizon of the last lease the earlier leader may have sent (its
  fenced record says how late that was) has passed;
* a leader leases no period ending after what it has recorded (``may_lease``), so a deposed
  leader that still sends cannot lease past what its successor keeps aside.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mission_control.client.fleet_limits import fair_share
from mission_control.client.fleet_retries import calls_resource, fleet_retry_units, retry_resources
from mission_control.client.policy import UNLEASED_SECS, ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

# how far ahead an earlier leader may have leased when its record does not say: a leader
# records that far ahead of its clock, no further
from .lease_epoch import RECORD_AHEAD_SECS
from .unleased_claims import UnleasedBound, recent

_log = logging.getLogger("mission_control.server.capacity")

#: Holders past their horizon are shown this long (and at most this many).
LAPSED_SHOWN_SECS = 600.0
LAPSED_SHOWN = 10_000

Send = Callable[[str, pb.ConnectResponse], bool]

#: A holder is split for by what it asked in its last periods (:func:`_asked_now`): a steady
#: caller whose calls fall on the period grid counts 0, 1 or 2 calls in one period (its
#: period starts where its lease says, as it received it), and a lease of nothing after a
#: period that happened to count 0 refuses the call of the next.
ASKED_PERIODS = 3


@dataclass
class _Holder:
    wanted: float = 0.0  # what it wants now, from what it asked in its last periods
    #: what each agent it speaks for asked in each of them (newest last)
    asked: tuple[tuple[float, ...], ...] = ()
    used: float = 0.0
    agents: int = 1
    #: what each agent it speaks for wants (a follower relays its agents' demands)
    wants: tuple[float, ...] = ()
    agents_known: int = 0
    #: what it says it spends in a period without a lease, and what of that is believed
    claimed: float = 0.0
    safe_units: float = 0.0
    sent: float = 0.0  # the last lease sent
    recent: tuple[float, ...] = ()  # the last few leases sent, newest last
    leased: bool = False  # this leader sent it a lease
    earlier: int = 0  # agents an earlier leader counted, as reported before this one leased
    #: what it may spend of an earlier leader's leases, as reported before this one leased
    earlier_units: float = 0.0
    #: a follower replica (speaks for its agents, and for those gone from it that it keeps)
    replica: bool = False


@dataclass
class _Limit:
    service: str
    resource: str
    fleet_units: float
    period_secs: float
    allocated: int = -1  # the last period index leased out
    holders: dict[str, _Holder] = field(default_factory=dict)
    #: holder -> (safe units it may be spending, until when): gone without a goodbye
    absent: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: holder -> when its reservation ended: if alive and still cut off, it refuses now
    lapsed: dict[str, float] = field(default_factory=dict)
    #: how long an agent spends without a lease (the policy's fleet.unleased_secs)
    unleased_secs: float = UNLEASED_SECS
    #: what an agent spends without a lease when the policy sets a safe_share
    safe_share_units: float | None = None
    #: earlier horizons an agent cut off may still hold: (horizon, until when, monotonic)
    held_horizons: list[tuple[float, float]] = field(default_factory=list)
    #: units the last split kept aside for agents absent or not back yet
    kept_aside: float = 0.0
    leased: float = 0.0
    demanded: float = 0.0
    used: float = 0.0
    warm: bool = True  # the leader is new: agents may still spend an earlier leader's leases
    expected: int = 0  # while warm: the most agents any agent back heard of
    #: A fleet retry budget's retries: their units follow the fleet's calls (this policy's).
    retries_of: ServicePolicy | None = None
    #: A fleet retry budget's calls: metered (agents report them), never leased.
    metered: bool = False


class CapacityLeaser:
    """Leases out every fleet-shared limit.

    Args:
        policies: the policies in force (which resources are fleet-shared, how much).
        send: delivers a message to a connected holder; False when it is gone.
        epoch: the leader's epoch (rises with every new leader).
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
    ) -> None:
        self.policies = policies
        self.send = send
        self.epoch = epoch
        self.clock = clock
        self.wall = wall
        self.leased_before = leased_before
        self.earlier_until = earlier_until
        self.may_lease = may_lease
        self.on_leased = on_leased
        self.recorded_horizon = recorded_horizon
        self.limits: dict[tuple[str, str], _Limit] = {}
        self._epoch: int | None = None
        self._earlier_end = 0.0  # when an earlier leader's last lease ended (monotonic)
        #: (limit, holder, units, the lease's other fields): made, not sent yet
        self._outbox: deque[tuple[_Limit, str, float, pb.CapacityLease]] = deque()
        #: limits no policy names any more, until no agent may still spend under them
        self._put_aside: dict[tuple[str, str], tuple[_Limit, float]] = {}

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
            found = self.limits.get(key)
            horizon = horizons.get(key, UNLEASED_SECS)
            if found is None:
                self.limits[key] = self._limit_again(key, units, period, horizon)
            elif found.period_secs != period:
                self.limits[key] = _Limit(
                    key[0],
                    key[1],
                    units,
                    period,
                    holders=found.holders,
                    unleased_secs=found.unleased_secs,
                    held_horizons=found.held_horizons,
                )
            elif found.retries_of is None:
                found.fleet_units = units
            limit = self.limits[key]
            limit.safe_share_units = safe.get(key)
            self._new_horizon(limit, horizon)
            policy = retries.get(key)
            limit.metered = policy is not None and key[1] == calls_resource(key[0])
            limit.retries_of = policy if policy is not None and not limit.metered else None

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

    def _limit_again(self, key: tuple[str, str], units: float, period: float, horizon: float) -> _Limit:
        """A limit a policy names (again: with what was put aside when it was deleted)."""
        earlier = self._put_aside.pop(key, None)
        if earlier is None or earlier[1] <= self.clock():
            return _Limit(key[0], key[1], units, period, unleased_secs=horizon)
        old = earlier[0]
        return _Limit(
            key[0],
            key[1],
            units,
            period,
            absent=old.absent,
            unleased_secs=old.unleased_secs,
            held_horizons=old.held_horizons,
        )

    def _new_horizon(self, limit: _Limit, horizon: float) -> None:
        """The policy's horizon changed. An agent cut off before it heard of the change
        keeps the one it knew (and one connected keeps the end its last lease gave it), so
        the old horizon stays in force here until no agent can still hold it: its last
        lease began at most two periods ahead, and one an earlier leader sent at most as
        far ahead as a leader records."""
        old = limit.unleased_secs
        if horizon != old:
            until = self.clock() + old + 2 * limit.period_secs + RECORD_AHEAD_SECS
            limit.held_horizons.append((old, until))
        if horizon > old:
            # an agent cut off from this leader may hear of a raise (through a replica
            # that saw it first, or it is still connected there): it spends that much longer
            grow = horizon - old
            limit.absent = {h: (units, until + grow) for h, (units, until) in limit.absent.items()}
        limit.unleased_secs = horizon

    def _horizon(self, limit: _Limit, now: float) -> float:
        """The longest horizon an agent may still hold: the policy's, an earlier one, or one
        an earlier leader recorded (this replica may have started after it was lowered)."""
        limit.held_horizons = [(h, until) for h, until in limit.held_horizons if until > now]
        recorded = self.recorded_horizon(limit.service, limit.resource)
        return max([limit.unleased_secs, recorded, *(h for h, _ in limit.held_horizons)])

    def hold_secs(self, service: str, resource: str) -> float | None:
        """How long a holder gone without a goodbye may still spend the limit: the longest
        horizon it may hold and the two periods its last lease may be ahead (None: no such
        fleet-shared limit)."""
        limit = self.limits.get((service, resource))
        if limit is None or limit.metered:
            return None
        return self._horizon(limit, self.clock()) + 2 * limit.period_secs

    def demand(self, holder: str, demand: pb.CapacityDemand) -> None:
        limit = self.limits.get((demand.service, demand.resource))
        if limit is None:
            return
        limit.absent.pop(holder, None)
        limit.lapsed.pop(holder, None)
        if demand.leaving:
            limit.holders.pop(holder, None)
            return
        entry = limit.holders.setdefault(holder, _Holder())
        entry.used = _finite(demand.used)
        entry.agents = max(1, demand.agents)
        # (a follower that does not say what each agent wants: all alike)
        alike = (_finite(demand.wanted) / entry.agents,) * entry.agents
        wants = tuple(_finite(w) for w in demand.agents_wanted) or alike
        entry.asked = (*entry.asked[-(ASKED_PERIODS - 1) :], wants)
        entry.wants = _asked_now(entry.asked)
        entry.wanted = sum(entry.wants)
        entry.replica = bool(demand.agents_wanted)
        entry.agents_known = demand.agents_known
        # a claim is believed only as far as the leader knows it: a client that claims the
        # whole fleet and goes without a goodbye must not keep it aside for H
        entry.claimed = min(_finite(demand.safe_units), limit.fleet_units)
        entry.safe_units = self._bound(limit, entry, self.clock()).believe(entry.claimed)
        if not entry.leased:
            entry.earlier, entry.earlier_units = demand.agents_known, entry.safe_units

    def forget(self, holder: str) -> None:
        """The holder's stream ended: it may still spend its safe share (its last lease)
        until its horizon."""
        for limit in self.limits.values():
            self._absent(limit, holder)

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

    def _bound(self, limit: _Limit, entry: _Holder, now: float) -> UnleasedBound:
        """What ``entry`` may spend without a lease, as far as this leader knows."""
        open_ = self._earlier_open(limit, now)
        return UnleasedBound(limit.fleet_units, limit.safe_share_units, entry.recent, open_)

    def _earlier_open(self, limit: _Limit, now: float) -> bool:
        """Whether an agent may still spend an earlier leader's lease: until the horizon
        of the last one that leader may have sent (not known before this one leads)."""
        return self._epoch is None or now < self._earlier_horizon(limit, now)

    def _earlier_horizon(self, limit: _Limit, now: float) -> float:
        """When the last agent spending an earlier leader's lease stops."""
        return self._earlier_end + self._horizon(limit, now) + 2 * limit.period_secs

    def _absent(self, limit: _Limit, holder: str) -> None:
        entry = limit.holders.pop(holder, None)
        if entry is None:
            return
        now = self.clock()
        bound = self._bound(limit, entry, now)
        units = max(bound.believe(entry.claimed), entry.sent)
        if units <= 0:
            return
        # its last lease began at most 1.5 periods from now (sent half a period ahead)
        until = now + self._horizon(limit, now) + 2 * limit.period_secs
        if bound.from_earlier(entry.claimed) and entry.sent < units:
            # an earlier leader's lease: spent no longer than any of those may be
            until = min(until, self._earlier_horizon(limit, now))
        limit.absent[holder] = (units, until)

    def tick(self, *, send: bool = True) -> None:
        """Lease the next period of every limit once the running one is half over (and
        send the leases, unless ``send`` is False: :meth:`send_queued` sends them then)."""
        now, wall = self.clock(), self.wall()
        epoch = self.epoch()
        if epoch != self._epoch:  # leading anew: agents may be spending safe shares
            self._epoch = epoch
            earlier = self.earlier_until()
            ahead = RECORD_AHEAD_SECS if earlier is None else earlier - wall
            self._earlier_end = now + min(max(0.0, ahead), RECORD_AHEAD_SECS)
            for limit in self.limits.values():
                limit.allocated, limit.warm, limit.expected = -1, True, 0
                for entry in limit.holders.values():  # leased in an earlier term of this replica
                    entry.safe_units = self._bound(limit, entry, now).believe(entry.claimed)
                    entry.leased, entry.earlier_units = False, entry.safe_units
        for limit in list(self.limits.values()):
            index = math.floor(wall / limit.period_secs)
            into = wall - index * limit.period_secs
            ends = (index + 2) * limit.period_secs
            half = into >= limit.period_secs / 2 and limit.allocated <= index
            if half and self.may_lease(ends, ends + limit.period_secs):
                self._allocate(limit, index + 1, now, wall)
        if send:
            self.send_queued()

    # -- internals -------------------------------------------------------------

    def _pool(self, limit: _Limit, now: float) -> float:
        """What may be leased for a period. Every agent without a lease spends its last
        one, so what agents cut off may spend is kept back; and while a new leader warms
        up, only what the agents already back were spending is split among them (the
        others spend the rest of what the last leader leased)."""
        self._lapse(limit, now)
        absent = sum(units for units, _ in limit.absent.values())
        limit.kept_aside = absent
        if limit.warm:
            # How many agents shared the limit, as the agents back last heard it: none
            # heard of any lease (a new fleet), or all of them are back, ends the warm-up.
            reported = max((e.earlier for e in limit.holders.values()), default=0)
            limit.expected = expected = max(limit.expected, reported)
            if not (expected or self.leased_before()):
                return max(0.0, limit.fleet_units - absent)  # no sign of earlier leases (yet)
            known = sum(e.agents for e in limit.holders.values() if e.earlier)
            # what they held of the earlier leases, not of this leader's: those are split
            # from this pool, and counting them again would shrink it period by period
            back = sum(e.earlier_units for e in limit.holders.values())
            everyone = 0 < expected <= known
            # an agent the earlier leader leased last stops spending at this horizon
            # (the longest horizon any of them may hold: an operator may have just lowered it)
            horizon = self._earlier_end + self._horizon(limit, now) + 2 * limit.period_secs
            if now >= horizon or everyone or back + absent >= limit.fleet_units - 1e-6:
                limit.warm = False
            else:
                limit.kept_aside = max(0.0, limit.fleet_units - back)
                return back
        return max(0.0, limit.fleet_units - absent)

    @staticmethod
    def _lapse(limit: _Limit, now: float) -> None:
        """Reservations past their horizon end (a holder still cut off refuses by now)."""
        for holder in [h for h, (_, until) in limit.absent.items() if until <= now]:
            del limit.absent[holder]
            limit.lapsed[holder] = now
        for holder in [h for h, at in limit.lapsed.items() if at <= now - LAPSED_SHOWN_SECS]:
            del limit.lapsed[holder]
        while len(limit.lapsed) > LAPSED_SHOWN:
            del limit.lapsed[next(iter(limit.lapsed))]

    def _allocate(self, limit: _Limit, index: int, now: float, wall: float) -> None:
        limit.allocated = index
        if not limit.holders:
            return
        if limit.metered:  # a fleet retry budget's calls: counted, not leased
            limit.used = limit.demanded = sum(e.used for e in limit.holders.values())
            return
        if limit.retries_of is not None:
            calls = self.limits.get((limit.service, calls_resource(limit.service)))
            fleet_calls = sum(e.used for e in calls.holders.values()) if calls is not None else 0.0
            limit.fleet_units = fleet_retry_units(limit.retries_of, fleet_calls)
        pool = self._pool(limit, now)
        demand = {h: e.wanted for h, e in limit.holders.items()}
        limit.demanded = sum(demand.values())
        limit.used = sum(e.used for e in limit.holders.values())
        shares = _per_agent_share(pool, limit.holders)
        whole = limit.resource == f"{limit.service}.requests" or limit.retries_of is not None
        if whole:  # whole units
            shares = _whole(shares, index)
        # a holder that misses this lease goes on with its last one: shrinks count in
        # full for one more period
        # (a follower's agents may spend what they last had, and those gone from it what it
        # keeps for them: its units without a lease)
        last = {
            h: max(e.sent, e.safe_units if not e.sent or e.replica else 0.0) for h, e in limit.holders.items()
        }
        shares = _late_shrinks(shares, last, pool, whole)
        limit.leased = sum(shares.values())
        # every agent that may be spending: those leased now and those cut off
        agents = sum(e.agents for e in limit.holders.values()) + len(limit.absent)
        if limit.warm:
            agents = max(agents, limit.expected)
        start = index * limit.period_secs
        # every holder's lease differs only in its units: copy one (cheaper than building
        # 10,000 messages field by field)
        template = pb.CapacityLease(
            service=limit.service,
            resource=limit.resource,
            period=round(start * 1000),
            agents=agents,
            fleet_units=limit.fleet_units,
            epoch=self._epoch or 0,
        )
        template.starts_in.FromNanoseconds(int(max(0.0, start - wall) * 1e9))
        template.period_length.FromNanoseconds(int(limit.period_secs * 1e9))
        for holder, units in shares.items():
            entry = limit.holders[holder]
            entry.sent, entry.leased, entry.recent = units, True, recent(entry.recent, units)
            self._outbox.append((limit, holder, units, template))

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
            if self.send(holder, message):
                delivered = True
            else:  # no stream: it may be cut off, spending its last lease
                self._absent(limit, holder)
        if delivered:
            self.on_leased()

    def usage(self) -> list[pb.FleetLimitUsage]:
        return [
            pb.FleetLimitUsage(
                service=limit.service,
                resource=limit.resource,
                fleet_units=limit.fleet_units,
                leased=limit.leased,
                demanded=limit.demanded,
                used=limit.used,
                agents=sum(e.agents for e in limit.holders.values()),
                period_secs=limit.period_secs,
                kept_aside=limit.kept_aside,
                past_horizon=len(limit.lapsed),
            )
            for limit in self.limits.values()
            if not limit.metered
        ]


def _per_agent_share(pool: float, holders: dict[str, _Holder]) -> dict[str, float]:
    """Each holder's part of ``pool``: split max-min fair among the agents (a follower
    replica speaks for several, and divides its part among them the same way), so an
    agent behind a follower gets what one connected to the leader would."""
    keys: dict[str, str] = {}
    wanted: dict[str, float] = {}
    for holder, entry in holders.items():
        for i, want in enumerate(entry.wants or (entry.wanted,)):
            key = f"{i}\x00{holder}"
            keys[key], wanted[key] = holder, want
    shares = dict.fromkeys(holders, 0.0)
    for key, units in fair_share(pool, wanted).items():
        shares[keys[key]] += units
    return shares


def _whole(shares: dict[str, float], turn: int) -> dict[str, float]:
    """The shares in whole units (a fraction of a call is of no use to anybody): each is
    rounded down and the units left over go one each to the largest fractions, ties taking
    turns period by period."""
    whole = {h: math.floor(units + 1e-9) for h, units in shares.items()}
    spare = math.floor(sum(shares.values()) + 1e-9) - sum(whole.values())
    if spare <= 0:
        return {h: float(units) for h, units in whole.items()}

    def rank(holder: str) -> tuple[float, int]:
        return -round(shares[holder] - whole[holder], 6), zlib.crc32(f"{holder}/{turn}".encode())

    order = sorted(shares, key=rank)
    for holder in order[: max(0, spare)]:
        whole[holder] += 1
    return {h: float(units) for h, units in whole.items()}


def _late_shrinks(
    shares: dict[str, float], last: dict[str, float], pool: float, whole: bool
) -> dict[str, float]:
    """Shares such that the sum over holders of max(last lease, new lease) stays within
    ``pool``: a holder that shrinks may not get its new lease in time and spend its last
    one, so the units it gives up go to others only a period later. What room is left goes
    to the growing holders smallest lease first (max-min, as the split itself): one back
    from nothing to its one call a period is not cut to nothing while others take turns at
    the units left over by rounding (in whole units when ``whole``)."""
    keep = {h: min(units, last.get(h, 0.0)) for h, units in shares.items()}
    held = sum(max(0.0, last.get(h, 0.0) - units) for h, units in shares.items())
    growing = [h for h, units in shares.items() if units > keep[h]]
    room = pool - sum(keep.values()) - held
    if not growing or room >= sum(shares[h] - keep[h] for h in growing) - 1e-9:
        return shares
    level = _level(max(0.0, room), [(keep[h], shares[h]) for h in growing])
    result = dict(keep)
    for h in growing:
        result[h] = min(shares[h], max(keep[h], level))
    if whole:
        result.update({h: float(math.floor(result[h] + 1e-9)) for h in growing})
        spare = math.floor(max(0.0, room) + 1e-9) - sum(result[h] - keep[h] for h in growing)
        for h in sorted((h for h in growing if result[h] < shares[h]), key=result.__getitem__)[: int(spare)]:
            result[h] += 1.0
    return result


def _level(room: float, spans: list[tuple[float, float]]) -> float:
    """The level L such that raising each (low, high) span to min(high, max(low, L))
    takes ``room`` (water-filling; ``room`` is less than every span raised to its high)."""
    edges = sorted({edge for span in spans for edge in span})
    for below, above in itertools.pairwise(edges):
        cost = sum(max(0.0, min(high, above) - max(low, below)) for low, high in spans if low < above)
        if cost >= room - 1e-12:
            rising = sum(1 for low, high in spans if low <= below < high)
            return below + (room / rising if rising else 0.0)
        room -= cost
    return edges[-1]


def _asked_now(asked: tuple[tuple[float, ...], ...]) -> tuple[float, ...]:
    """What each agent wants: what it asked in its last period, or the median of its last
    three if that is more — a rise counts at once, a fall once it held for two periods
    (a follower's agents by their place in its report, while it speaks for as many)."""
    newest = asked[-1]
    alike = [a for a in asked if len(a) == len(newest)]
    return tuple(max(column[-1], sorted(column)[len(column) // 2]) for column in zip(*alike, strict=True))


def _finite(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0
