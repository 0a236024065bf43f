"""What a follower hands to nobody of each lease for an agent gone from it without a goodbye.

Such an agent never hears of a changed policy: until its horizon it spends the last lease it
received, of the old terms, every old period. Its last demand's ``safe_units`` (that lease)
says no terms, so the follower pairs it with the widest terms it leased the agent in within
its horizon (the longest period, the highest fleet rate), and its last lease passed on with
that lease's own terms; it reserves the larger of the two, each in the terms of the lease
now split:

* a period shortened by r (new/old): the old lease times 2r / (1 + r) a new period. A window
  of n old periods (n >= 1: a window at least an old period long) holds n/r + 1 new ones,
  reserving 2(n + r) / (1 + r) >= n + 1 old leases, the most it spends in such a window. In
  the last old period before the follower lets it go (a window may hold only the end of its
  horizon, which may fall that late) a whole old lease each new period;
* a period lengthened: the old lease scaled to the new length (it spends one each old period);
* a lowered limit: its share of the new limit (its old lease times the new fleet rate over
  the old). What it spends above that, its old lease, the fleet cannot keep out while it is
  cut off (README, "A lowered limit").

Reserving the old lease whole from every new, smaller lease left the agents beside it
nothing until its horizon. What it may spend beyond the reserve in one new period the leader
keeps room for: the follower's units without a lease say all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mission_control.resilience.v1 import control_plane_pb2 as pb


def terms(lease: pb.CapacityLease) -> tuple[float, float]:
    """A lease's period length (s) and the fleet's units a second (0, 0: not said)."""
    period = lease.period_length.ToNanoseconds() / 1e9
    if period <= 0:
        return 0.0, 0.0
    rate = 0.0 if lease.resource.endswith(".retries") else lease.fleet_units / period
    return period, rate  # a retry budget's units follow the fleet's calls: not a limit lowered


@dataclass(frozen=True, slots=True)
class Spend:
    """Units an agent may spend a period, in the terms of the lease they were (0: unknown)."""

    units: float
    period: float = 0.0
    rate: float = 0.0

    def reserve(self, lease: pb.CapacityLease, now: float, until: float) -> float:
        """What of ``lease`` to hand to nobody for it (``now``: the follower's clock;
        ``until``: when the follower lets it go)."""
        units = self.units
        period, rate = terms(lease)
        if self.period <= 0 or period <= 0:
            return units
        end = now + lease.starts_in.ToNanoseconds() / 1e9 + period
        if period > self.period:
            units *= period / self.period
        elif period < self.period and end <= until - self.period:
            r = period / self.period
            units *= 2 * r / (1 + r)
        if 0 < rate < self.rate:
            units *= rate / self.rate
        return units


class LeaseTerms:
    """The terms of the leases passed on to each agent (of one limit), with when last."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[tuple[float, float], float]] = {}

    def sent(self, agent_id: str, lease: pb.CapacityLease, now: float) -> None:
        period, rate = terms(lease)
        if period > 0:
            self._seen.setdefault(agent_id, {})[(period, rate)] = now

    def forget(self, agent_id: str) -> None:
        self._seen.pop(agent_id, None)

    def widest(self, agent_id: str, safe_units: float, since: float) -> Spend:
        """What ``agent_id`` said it spends without a lease, in the widest terms it was
        leased in since ``since`` (none known: no terms)."""
        seen = [t for t, at in self._seen.get(agent_id, {}).items() if at >= since]
        if not seen:
            return Spend(safe_units)
        return Spend(safe_units, max(p for p, _ in seen), max(r for _, r in seen))

    def gone(self, agent_id: str, safe_units: float, last: Spend, since: float) -> tuple[Spend, ...]:
        """What ``agent_id``, gone, may spend: its last lease passed on, and what it said it
        spends without one in the widest terms it was leased in since ``since``."""
        widest = self.widest(agent_id, safe_units, since)
        self.forget(agent_id)
        return (last, widest)
