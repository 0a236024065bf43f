"""What a leader keeps out of a fleet limit's split for agents that may be spending without
a lease: those gone without a goodbye (until their horizon), and, while a new leader warms
up, those an earlier leader leased that are not back yet (until the horizon of the last
lease it may have sent). I4 rests on this: every agent without a lease spends its last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .capacity_state import Holder, LeasedLimit

# how far ahead an earlier leader may have leased when its record does not say: a leader
# records that far ahead of its clock, no further
from .lease_epoch import RECORD_AHEAD_SECS
from .unleased_claims import UnleasedBound


class LeaderTerm:
    """One leader's term, as the split needs it: its epoch, and until when an agent may
    still spend an earlier leader's lease.

    Args:
        clock: monotonic seconds.
        leased_before: whether an earlier leader may have leased.
        earlier_epoch: the epoch the last earlier leader recorded (0: none known).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        leased_before: Callable[[], bool],
        earlier_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.clock = clock
        self.leased_before = leased_before
        self.earlier_epoch = earlier_epoch
        self.epoch: int | None = None
        self.earlier_end = 0.0  # when an earlier leader's last lease ended (monotonic)

    def begin(
        self, epoch: int, earlier_until: float | None, wall: float, limits: Iterable[LeasedLimit]
    ) -> None:
        """Leading anew (``earlier_until``: until when the earlier leader's record let it
        lease, wall seconds; None: not known): agents may be spending earlier leases."""
        now = self.clock()
        self.epoch = epoch
        ahead = RECORD_AHEAD_SECS if earlier_until is None else earlier_until - wall
        self.earlier_end = now + min(max(0.0, ahead), RECORD_AHEAD_SECS)
        for limit in limits:
            limit.allocated, limit.warm, limit.expected = -1, True, 0
            for entry in limit.holders.values():  # leased in an earlier term of this replica
                entry.safe_units = self.bound(limit, entry, now).believe(entry.claimed)
                entry.leased, entry.earlier_units = False, entry.safe_units

    def bound(self, limit: LeasedLimit, entry: Holder, now: float) -> UnleasedBound:
        """What ``entry`` may spend without a lease, as far as this leader knows."""
        return UnleasedBound(
            limit.fleet_units, limit.safe_share_units, entry.recent, self.earlier_open(limit, now)
        )

    def earlier_open(self, limit: LeasedLimit, now: float) -> bool:
        """Whether an agent may still spend an earlier leader's lease: until the horizon
        of the last one that leader may have sent (not known before this one leads)."""
        return self.epoch is None or now < self.earlier_horizon(limit, now)

    def earlier_horizon(self, limit: LeasedLimit, now: float) -> float:
        """When the last agent spending an earlier leader's lease stops."""
        return self.earlier_end + limit.horizon(now) + 2 * limit.period_secs

    def new_horizon(self, limit: LeasedLimit, horizon: float) -> None:
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

    def set_absent(self, limit: LeasedLimit, holder: str) -> None:
        """``holder``'s stream is gone without a goodbye: what it may spend is kept aside
        until its horizon."""
        entry = limit.holders.pop(holder, None)
        if entry is None:
            return
        now = self.clock()
        bound = self.bound(limit, entry, now)
        units = max(bound.believe(entry.claimed), entry.sent)
        carried = entry.still_carried(now)
        if units <= 0 and carried <= 0:
            return
        # its last lease began at most 1.5 periods from now (sent half a period ahead)
        until = now + limit.horizon(now) + 2 * limit.period_secs
        if bound.from_earlier(entry.claimed) and entry.sent < units:
            # an earlier leader's lease: spent no longer than any of those may be
            until = min(until, self.earlier_horizon(limit, now))
        if carried > 0 and entry.carried is not None:
            # back from a break and cut off again before leases on this stream replaced
            # what its agents held: the larger of both stays aside
            units, until = max(units, carried), max(until, entry.carried[1])
        limit.absent[holder] = (units, until)

    def pool(self, limit: LeasedLimit, now: float) -> float:
        """What may be leased for a period. Every agent without a lease spends its last
        one, so what agents cut off may spend is kept back; and while a new leader warms
        up, only what the agents already back were spending is split among them (the
        others spend the rest of what the last leader leased)."""
        limit.lapse(now)
        absent = sum(units for units, _ in limit.absent.values())
        limit.kept_aside = absent
        if limit.warm:
            # How many agents shared the limit, as the agents back last heard it: none
            # heard of any lease (a new fleet), or all of them are back, ends the warm-up.
            reported = max((e.earlier for e in limit.holders.values()), default=0)
            limit.expected = expected = max(limit.expected, reported)
            if not (expected or self.leased_before()):
                return max(0.0, limit.fleet_units - absent)  # no sign of earlier leases (yet)
            # Only the last earlier leader's count says all are back: an agent back with a
            # lease of a leader before it counts the agents of that one (two terms that
            # each leased one agent, and the second one's agent not back yet).
            current = self._current(limit)
            last_count = max((e.earlier for e in current), default=0)
            known = sum(e.counted for e in current if e.earlier)
            # what they held of the earlier leases, not of this leader's: those are split
            # from this pool, and counting them again would shrink it period by period
            back = sum(e.earlier_units for e in limit.holders.values())
            # and only a record names the last earlier leader: without one (the store lost
            # it), agents of a later leader than any back may be spending its leases
            everyone = (
                self._last_known(limit)
                and 0 < last_count <= known
                and expected <= sum(e.counted for e in limit.holders.values() if e.earlier)
            )
            # an agent the earlier leader leased last stops spending at this horizon
            # (the longest horizon any of them may hold: an operator may have just lowered it)
            if (
                now >= self.earlier_horizon(limit, now)
                or everyone
                or back + absent >= limit.fleet_units - 1e-6
            ):
                limit.warm = False
            else:
                limit.kept_aside = max(0.0, limit.fleet_units - back)
                return back
        return max(0.0, limit.fleet_units - absent)

    def count_known(self, limit: LeasedLimit) -> bool:
        """Whether this leader knows how many agents the last earlier leader leased: none
        (a new fleet), or as an agent back holding that leader's lease heard it. A count
        it announces without knowing that is not everyone, and a successor must not take
        it for everyone (agents of the leader before may still be spending)."""
        if not (limit.expected or self.leased_before()):
            return True
        if not self._last_known(limit):
            return False
        return max((e.earlier for e in self._current(limit)), default=0) > 0

    def not_back(self, limit: LeasedLimit) -> int:
        """How many of the agents the last earlier leader counted (as the agents back holding
        its leases heard it) are not back: they may still be spending its leases."""
        current = self._current(limit)
        counted = max((e.earlier for e in current), default=0)
        return max(0, counted - sum(e.counted for e in current if e.earlier))

    def _last_known(self, limit: LeasedLimit) -> bool:
        """Whether the epoch of the last earlier leader may be known: a record names it, or
        no agent back names the epoch it holds (one that does not say counts as of the
        last). Without a record, an agent back holding an epoch shows an earlier leader, and
        agents of a later one (the store lost its record) may not be back yet."""
        return self.earlier_epoch() > 0 or not any(e.earlier_epoch for e in limit.holders.values())

    def _current(self, limit: LeasedLimit) -> list[Holder]:
        """The holders back whose earlier lease is of the last earlier leader known (the
        record's, or the highest an agent back holds); one that did not say its epoch
        counts as one of them."""
        newest = max(self.earlier_epoch(), *(e.earlier_epoch for e in limit.holders.values()), 0)
        return [e for e in limit.holders.values() if not e.earlier_epoch or e.earlier_epoch >= newest]


def earlier_count(demand: pb.CapacityDemand, entry: Holder) -> tuple[int, int]:
    """How many agents the earlier leader counted, as ``demand`` says the agents holding its
    lease heard it, and how many of the agents ``entry`` speaks for hold that lease. An agent
    holds it when it says a count; behind a follower only those the follower says hold a
    lease of the epoch it reports do (a new agent there, or one holding an older leader's
    lease, is none of them), and of an older follower that does not say, one: at least
    one of its agents heard the count it reports (the leader then warms up longer, never
    less)."""
    if not demand.agents_known:
        return 0, 0
    if not entry.replica:
        return demand.agents_known, 1
    if not demand.agents_held:
        return demand.agents_known, 1
    return demand.held_known or demand.agents_known, min(demand.agents_held, entry.agents)
