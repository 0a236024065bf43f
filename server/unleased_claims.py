"""What the leader believes of an agent's claim that it spends without a lease.

An agent reports with its demand what it would spend in a period without a lease
(``CapacityDemand.safe_units``); the leader keeps that aside when the agent's stream breaks
without a goodbye, and counts it as warm-up evidence when it takes over. A claim is only a
number a client sent, so the leader believes no more of it than it knows the agent can
spend: the policy's ``safe_share`` when one is set, else the agent's last lease — one this
leader sent it recently, or, while an earlier leader's leases may still be spent, one of
those (at most the fleet's units: the leader cannot tell an agent that held every unit from
one that says so; the epoch record says nothing per agent).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The leases a holder was last sent that its claim may name: it may have missed the
#: newest (sent half a period ahead), and spend the one before until its period ends.
RECENT_LEASES = 3


@dataclass(frozen=True, slots=True)
class UnleasedBound:
    """What a holder may spend in a period without a lease, as this leader knows it.

    Attributes:
        fleet_units: the fleet's units per period (no agent spends more).
        safe_share_units: the policy's ``safe_share`` in units; None: not set (agents
            spend their last lease).
        recent: the leases this leader last sent the holder (newest last).
        earlier_open: whether an agent may still be spending an earlier leader's lease.
    """

    fleet_units: float
    safe_share_units: float | None
    recent: tuple[float, ...]
    earlier_open: bool

    def known(self) -> float:
        """The most the holder can spend unleased, as far as this leader can tell."""
        if self.safe_share_units is not None:
            return min(self.safe_share_units, self.fleet_units)
        if self.earlier_open:
            return self.fleet_units
        return min(max(self.recent, default=0.0), self.fleet_units)

    def believe(self, claimed: float) -> float:
        """The claim (finite, not negative), cut to :meth:`known`."""
        return min(max(0.0, claimed), self.known())

    def from_earlier(self, claimed: float) -> bool:
        """Whether believing ``claimed`` rests on an earlier leader's lease: the holder may
        spend it no longer than any agent may spend such a lease."""
        mine = self.safe_share_units if self.safe_share_units is not None else max(self.recent, default=0.0)
        return self.believe(claimed) > mine + 1e-9


def recent(sent: tuple[float, ...], units: float) -> tuple[float, ...]:
    """The holder's recent leases once ``units`` is sent."""
    return (*sent[-(RECENT_LEASES - 1) :], units)
