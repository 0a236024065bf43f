"""What an agent spends again, period after period, of its last fleet lease while it has
no fresh one: the lease without the unit left over by rounding that it may hold
(:func:`respent_units`) — and why the fleet then stays within its units (I4).

The leaders count on one number per agent without a lease, the one it reports with its
demand (``CapacityDemand.safe_units``, this function's value): what a cut-off agent is kept
aside for until its horizon, what a new leader splits among the agents back while it warms
up, and what ends that warm-up once the agents back hold the whole fleet. Each of those is
sound only if the agents of one term, each spending that number again from whichever period
it last heard a lease in, spend at most the fleet's units ``F`` a period together. Why they
do, with ``L`` an agent's last lease and ``m`` the lowest of its last ``RECENT_LEASES``:

1. *Leases of one period or of two consecutive ones.* A leader's leases of a period sum to
   at most ``F`` (whole units: at most ``floor(F)``), and for two consecutive periods the
   sum over agents of the larger of their two leases does too: a holder that shrinks may
   miss its new lease, so what it gives up goes to others a period later
   (``server/capacity_split.late_shrinks``). Agents that lost their leader at once last
   heard it in its last period or the one before: even their whole last leases sum to at
   most ``F``, and what they spend again is never more (``respent_units <= L``).
2. *Periods further apart.* A request limit is leased in whole units: each agent's fair
   share ``f`` (max-min over the demands) is rounded down, and the units left over go one
   each to the largest fractions, ties in turns period by period; so ``L`` is at most
   ``floor(f) + 1``. One period's leases hold at most ``F - sum(floor(f))`` of those
   units, but agents that last heard leases in different periods may each hold one: 3 + 3
   + 2 of 7.5 (seed 1091), or 1 + 1 of 1.125 (one unit a period in turns). The rule spends
   ``L`` again when none of the last leases was lower (``m == L``), else ``L - 1``: at most
   ``floor(f)``, unless the agent held the unit left over in every one of its last leases;
   and a sum of ``floor(f)`` over one split's shares is at most ``F``.
3. *The unit held every time* (the largest fraction, or a tie won that many times
   running) is spent again, but no other agent holds it then. An agent is cut off either
   with everyone else (its leader lost: case 1) or alone, and then the leader hears its
   stream end and keeps aside what it claims, that unit included, until its horizon:
   the others are leased only the rest, so none of them gets the unit meanwhile. A new
   leader keeps the same count: it splits the claims of the agents back and keeps the
   rest of ``F`` aside for those not back (``server/capacity_aside.py``).

So every count the leaders keep of unleased spending holds what the agents spend.
``tests/server/test_lease_bound_property.py`` checks the sum where it matters — the calls
admitted in every window, against the limit plus one period's units — over many random
schedules of real leaders and agents on an injected clock (streams breaking, leaders
crashing, successors warming up); with the whole last lease spent again it fails.
``tests/client/test_fleet_limits_rounding.py`` checks case 2 over every combination of
periods in which three alike agents last heard their leases.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["RECENT_LEASES", "respent_units"]

#: The leases an agent remembers to tell its own rounded-down share from its last lease: a
#: leader splits a fractional limit in whole units, the units left over by rounding going
#: one each to a few agents, in turns; its last few leases show whether the last one held
#: such a unit.
RECENT_LEASES = 3


def respent_units(last: float, recent: Iterable[float]) -> float:
    """The last lease (``last``) as it is spent again without a fresh one: without the
    unit left over by rounding that it may hold. A unit held in the last lease and not in
    the lowest of the ``recent`` ones is such a unit (or the share just grew, and that unit
    waits for the next lease)."""
    lowest = min(recent, default=last)
    return min(last, max(lowest, last - 1.0))
