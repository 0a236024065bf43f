"""Fleet-shared limits: the fair split of a fleet's capacity, and an agent's leased part.

The control plane divides each period's capacity among the agents by what they asked for
in the previous period (:func:`fair_share`, max-min fairness: nobody gets more than they
want, nobody who wants gets less than an equal share, and what the modest leave goes to
the rest). An agent spends its lease locally (:class:`LeasedBudget`): no network call per
request. Periods follow each other without gaps, so over any window of W seconds the fleet
admits at most the limit plus one period's worth.

Periods are numbered by the control plane (their start in milliseconds on its clock, so a
new leader continues the numbering) and leases carry the leader's epoch: an agent only ever
moves forward in (epoch, period), and places a period where the lease says it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .lease_placement import LeasePlacement
from .lease_respent import RECENT_LEASES, respent_units

__all__ = ["LeasedBudget", "PeriodReport", "fair_share"]

#: An agent that asked for nothing still gets this share of an equal split, so that it
#: can start calling before its next demand report.
IDLE_FLOOR = 0.1


def fair_share(total: float, wanted: Mapping[str, float]) -> dict[str, float]:
    """Split ``total`` among holders by their demand (water-filling)."""
    if not wanted:
        return {}
    floor = total / len(wanted) * IDLE_FLOOR
    demand = {k: max(float(v), floor) for k, v in wanted.items()}
    result = dict.fromkeys(demand, 0.0)
    remaining = float(total)
    pending = sorted(demand, key=demand.__getitem__)
    for i, smallest in enumerate(pending):  # one pass: linear after the sort
        each = remaining / (len(pending) - i)
        if demand[smallest] <= each:
            result[smallest] = demand[smallest]
            remaining -= demand[smallest]
        else:
            for holder in pending[i:]:
                result[holder] = each
            break
    return result


@dataclass(frozen=True, slots=True)
class PeriodReport:
    """What an agent wanted and spent in one finished period, and whether it was leased."""

    period: int
    wanted: float
    used: float
    leased: bool


@dataclass(slots=True)
class _Lease:
    epoch: int
    period: int
    start: float
    units: float


@dataclass(slots=True)
class _Period:
    """The period being spent: a lease's, or an unleased one at the safe share."""

    lease: _Lease | None
    start: float
    end: float
    left: float
    wanted: float = 0.0
    spent: float = 0.0
    #: The leader epoch the period was spent under (an unleased one: the agent's latest).
    epoch: int = 0


class LeasedBudget:
    """An agent's part of one fleet limit, period by period (monotonic clock).

    Without a lease for the running period (control plane unreachable, lease late) the agent
    spends a safe share: ``safe_share`` of the fleet's units if set, else its last lease —
    the last fleet state stays in force, and the leases of one period never add up to more
    than the fleet's units. An agent that was never leased spends only an explicit
    ``safe_share`` (nothing by default) until its first lease: it does not believe it is
    alone.

    Unleased spending ends ``unleased_secs`` after the start of the last leased period (or
    after the budget was made, never leased): an agent cut off from every control plane
    for longer refuses, because a leader keeps what cut-off agents may spend aside for that
    long only (None: no end, for budgets that are metered rather than limited).
    """

    def __init__(
        self,
        fleet_units: float,
        period_secs: float,
        safe_share: float | None,
        now: float,
        unleased_secs: float | None = None,
    ) -> None:
        self.fleet_units = fleet_units
        self.period_secs = period_secs
        self.safe_share = safe_share
        self.unleased_secs = unleased_secs
        #: Unleased spending ends here (this process's clock).
        self.horizon = now + (unleased_secs if unleased_secs is not None else float("inf"))
        #: Agents sharing the limit, as last announced; 0 = never leased.
        self.agents = 0
        #: The highest leader epoch whose lease it took (reported with its demand: a leader
        #: below it moves its epoch above, or this agent would ignore its leases).
        self.epoch = 0
        #: The units of the latest lease (in epoch and period) received.
        self.last_units = 0.0
        self._last: tuple[int, int] = (-1, -1)
        #: The latest leases received, by (epoch, period): what :meth:`safe_units` rounds by.
        self._recent: dict[tuple[int, int], float] = {}
        #: The stream epoch this budget was last announced on (see the connection).
        self.announced = -1
        self._now = _Period(None, now, now + period_secs, self.safe_units())
        self._next: dict[int, _Lease] = {}
        self._number = 0  # the server's number of the running period (0 = none yet)
        #: Where leases' periods start on this process's clock.
        self.placement = LeasePlacement()
        #: Finished periods, to report.
        self.finished: list[PeriodReport] = []

    # -- reading ---------------------------------------------------------------

    @property
    def left(self) -> float:
        return self._now.left

    @property
    def leased(self) -> bool:
        return self._now.lease is not None

    @property
    def period(self) -> int:
        return self._number

    def safe_units(self) -> float:
        """What the agent spends in a period without a lease."""
        if self.safe_share is not None:
            return self.fleet_units * self.safe_share
        return min(self.respent_units(), self.fleet_units)

    def respent_units(self) -> float:
        """The last lease as it is spent again without a fresh one: without the unit left
        over by rounding that it may hold (:mod:`.lease_respent` says why the fleet then
        stays within its units)."""
        return respent_units(self.last_units, self._recent.values())

    def claim(self, now: float) -> float:
        """What the agent tells the control plane it spends in a period without a lease
        (``CapacityDemand.safe_units``): its safe share until its horizon, and nothing once
        past it. A new leader counts the claims of the agents back as their part of the
        last leader's units: one past its horizon holds no part (it spends nothing), and
        claiming its old lease would have others leased that part while the agents not back
        spend it."""
        return 0.0 if self.cut_off(now) else self.safe_units()

    def cut_off(self, now: float) -> bool:
        """Whether the agent is past its horizon without a lease: it spends nothing."""
        return self._now.lease is None and now >= self.horizon

    def used(self, now: float) -> int:
        """Units spent in the running period (the same question a TokenBucket answers)."""
        return round(self._now.spent)

    # -- leases ----------------------------------------------------------------

    def receive(
        self,
        period: int,
        units: float,
        starts_in: float,
        received: float,
        period_secs: float,
        agents: int,
        fleet_units: float,
        epoch: int = 0,
    ) -> None:
        """A lease received at ``received`` (this process's monotonic clock), its period
        starting ``starts_in`` after it was made: placed on the leader's grid by the least
        delayed lease yet (:mod:`.lease_placement`), not by this one's delay."""
        start = self.placement.place(epoch, period, starts_in, received)
        shift = period / 1000 - start  # the grid's time minus this clock's, as now known
        for waiting in self._next.values():  # placed by a more delayed lease: earlier now
            if waiting.epoch == epoch == self.placement.epoch:
                waiting.start = min(waiting.start, waiting.period / 1000 - shift)
        self.apply(period, units, start, period_secs, agents, fleet_units, epoch)

    def apply(
        self,
        period: int,
        units: float,
        start: float,
        period_secs: float,
        agents: int,
        fleet_units: float,
        epoch: int = 0,
    ) -> None:
        """A lease from the control plane; ``start`` on this process's clock. Leases of an
        earlier leader epoch, or of this epoch for a period already over, are ignored; a
        lease of a later epoch starts that leader's numbering, wherever its clock put it."""
        newer = epoch > self.epoch
        if epoch < self.epoch or (not newer and period < self._number):
            return
        if newer and start + period_secs <= self._now.start:
            return  # over before the running period began
        if newer:
            self._adopt(epoch, period, period_secs)
        self.agents = max(1, agents)
        self.fleet_units = fleet_units
        self.period_secs = period_secs
        lease = _Lease(epoch, period, start, units)
        if (epoch, period) >= self._last:
            self._last, self.last_units = (epoch, period), units
        if not self._recent or (epoch, period) >= min(self._recent):
            self._recent[(epoch, period)] = units
            for older in sorted(self._recent)[:-RECENT_LEASES]:
                del self._recent[older]
        if self.unleased_secs is not None:
            self.horizon = max(self.horizon, start + self.unleased_secs)
        running = self._now
        if period == self._number and (running.lease is None or running.lease.epoch < epoch):
            # the lease for the running period arrived late (or from a newer leader): it
            # replaces what the period had, less what was spent already
            running.lease, running.left = lease, max(0.0, units - running.spent)
            running.epoch = epoch
            running.start, running.end = start, start + period_secs
        elif period > self._number or newer:
            self._next[period] = lease
        if running.lease is None:
            # still on the safe share: never more than the share the new count allows
            running.left = min(running.left, max(0.0, self.safe_units() - running.spent))

    def _adopt(self, epoch: int, period: int, period_secs: float) -> None:
        # A new leader: what an earlier one leased ahead is void, and its period numbers
        # (its clock's) replace the earlier leader's. The running period becomes the one
        # before the lease in the new numbering, so that the new leader's next leases are
        # not taken for periods already over when its clock is behind the earlier one's.
        self.epoch = epoch
        self._next = {p: lease for p, lease in self._next.items() if lease.epoch >= epoch}
        if period < self._number:
            self._number = period - round(period_secs * 1000)

    # -- spending --------------------------------------------------------------

    def take(self, cost: float, now: float) -> float:
        """Spend ``cost``; 0.0 when done, else seconds until the next period."""
        self._roll(now)
        running = self._now
        running.wanted += cost
        if running.left >= cost:
            running.left -= cost
            running.spent += cost
            return 0.0
        return max(running.end - now, 0.001)

    def give_back(self, cost: float) -> None:
        """A call that took units did not go after all."""
        self._now.left += cost
        self._now.spent = max(0.0, self._now.spent - cost)

    def tick(self, now: float) -> None:
        """Close finished periods even when nothing is being spent (an idle agent's demand
        of zero must reach the control plane, or it would keep its share)."""
        self._roll(now)

    def drain_reports(self) -> list[PeriodReport]:
        reports, self.finished = self.finished, []
        return reports

    def _roll(self, now: float) -> None:
        # A period ends where a lease begins (the control plane's periods win over the
        # agent's own count), or at its end. A leased period runs on until the next lease
        # begins when that arrived a little late (its units are no more for it).
        while any(lease.start <= now for lease in self._next.values()) or (
            now >= self._now.end and not self._extended(now)
        ):
            running = self._now
            report = PeriodReport(self._number, running.wanted, running.spent, running.lease is not None)
            self.finished.append(report)
            del self.finished[:-16]
            self._now = self._following(running, now)

    def _extended(self, now: float) -> bool:
        running = self._now
        if running.lease is None or not self._next:
            return False
        return min(lease.start for lease in self._next.values()) < running.end + self.period_secs / 2

    def _following(self, running: _Period, now: float) -> _Period:
        begun = [p for p, lease in self._next.items() if lease.start <= now]
        if begun:
            lease = self._next[max(begun)]
            for stale in [p for p in self._next if p <= lease.period]:
                del self._next[stale]
            self._number = lease.period
            end = lease.start + self.period_secs
            # a newer leader's period that begins inside the running one takes its place:
            # what was spent there counts against it (its periods are out of phase with
            # the earlier leader's, and two overlapping periods would spend two shares)
            carried = running.spent if lease.start < running.end and running.epoch < lease.epoch else 0.0
            return _Period(lease, lease.start, end, max(0.0, lease.units - carried), epoch=lease.epoch)
        # no lease has begun: an unleased period, cut short where the next lease begins
        # (a lease's units are never spent before its start)
        start = running.end if running.end > now - self.period_secs else now
        end = start + self.period_secs
        if self._next:
            end = min(end, min(lease.start for lease in self._next.values()))
        if self._number:
            self._number += round(self.period_secs * 1000)
        # and nothing past the horizon: a leader keeps it aside no longer
        spendable = min(end, self.horizon) - start
        share = self.safe_units() * max(0.0, min(1.0, spendable / self.period_secs))
        return _Period(None, start, max(end, start), share, epoch=self.epoch)
