"""Fleet-shared limits: the fair split of a fleet's capacity, and an agent's leased part.

The control plane divides each period's capacity among the agents by what they asked for
in the previous period (:func:`fair_share`, max-min fairness: nobody gets more than they
want, nobody who wants gets less than an equal share, and what the modest leave goes to
the rest). An agent spends its lease locally (:class:`LeasedBudget`): no network call per
request. Periods follow each other without gaps, so over any window of W seconds the fleet
admits at most the limit plus one period's worth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LeasedBudget", "fair_share"]

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
    while pending:
        each = remaining / len(pending)
        smallest = pending[0]
        if demand[smallest] <= each:
            result[smallest] = demand[smallest]
            remaining -= demand[smallest]
            pending.pop(0)
        else:
            for holder in pending:
                result[holder] = each
            break
    return result


@dataclass
class _Lease:
    start: float
    units: float


class LeasedBudget:
    """An agent's part of one fleet limit, period by period (monotonic clock).

    Without a lease for the current period (control plane unreachable), the agent spends a
    safe share: ``safe_share`` of the fleet's units, by default an equal share by the last
    known number of agents — never unlimited. In its very first period it waits for a lease
    (spends nothing) unless ``safe_share`` is set; an agent that never reached the control
    plane then behaves as a fleet of one.
    """

    def __init__(self, fleet_units: float, period_secs: float, safe_share: float | None, now: float) -> None:
        self.fleet_units = fleet_units
        self.period_secs = period_secs
        self.safe_share = safe_share
        self.agents = 1
        self.period = 0
        self.end = now + period_secs
        self.left = fleet_units * safe_share if safe_share is not None else 0.0
        #: The stream epoch this budget was last announced on (see the connection).
        self.announced = -1
        self.wanted = 0.0
        self.spent = 0.0
        self.leased = False
        self._next: dict[int, _Lease] = {}
        #: (period, wanted, used) of finished periods, to report.
        self.finished: list[tuple[int, float, float]] = []

    def safe_units(self) -> float:
        share = self.safe_share if self.safe_share is not None else 1.0 / max(1, self.agents)
        return self.fleet_units * share

    def apply(
        self, period: int, units: float, start: float, period_secs: float, agents: int, fleet_units: float
    ) -> None:
        """A lease from the control plane; ``start`` on this process's clock."""
        self.agents = max(1, agents)
        self.fleet_units = fleet_units
        self.period_secs = period_secs
        if period == self.period and self.leased is False:
            # the lease for the running period arrived late: it replaces the safe share
            self.left = max(0.0, units - self.spent)
            self.leased = True
        elif period > self.period:
            self._next[period] = _Lease(start, units)

    def take(self, cost: float, now: float) -> float:
        """Spend ``cost``; 0.0 when done, else seconds until the next period."""
        self._roll(now)
        self.wanted += cost
        if self.left >= cost:
            self.left -= cost
            self.spent += cost
            return 0.0
        return max(self.end - now, 0.001)

    def _roll(self, now: float) -> None:
        while now >= self.end:
            self.finished.append((self.period, self.wanted, self.spent))
            del self.finished[:-16]
            self.wanted = self.spent = 0.0
            self.period += 1
            lease = self._next.pop(self.period, None)
            start = (
                lease.start
                if lease is not None and abs(lease.start - self.end) < self.period_secs
                else self.end
            )
            self.end = start + self.period_secs
            self.leased = lease is not None
            self.left = lease.units if lease is not None else self.safe_units()
            for stale in [p for p in self._next if p <= self.period]:
                del self._next[stale]
        # a lease far ahead of our count: the control plane's periods win
        ahead = [p for p, lease in self._next.items() if lease.start <= now]
        if ahead:
            period = max(ahead)
            lease = self._next.pop(period)
            self.finished.append((self.period, self.wanted, self.spent))
            self.period, self.end = period, lease.start + self.period_secs
            self.left, self.leased, self.wanted, self.spent = lease.units, True, 0.0, 0.0
            for stale in [p for p in self._next if p <= period]:
                del self._next[stale]

    def tick(self, now: float) -> None:
        """Close finished periods even when nothing is being spent (an idle agent's demand
        of zero must reach the control plane, or it would keep its share)."""
        self._roll(now)

    def give_back(self, cost: float) -> None:
        """A call that took units did not go after all."""
        self.left += cost
        self.spent = max(0.0, self.spent - cost)

    def used(self, now: float) -> int:
        """Units spent in the running period (the same question a TokenBucket answers)."""
        return round(self.spent)

    def drain_reports(self) -> list[tuple[int, float, float]]:
        reports, self.finished = self.finished, []
        return reports
