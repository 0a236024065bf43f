"""A leader without the record of the last epoch does not end its warm-up on a count (I4).

Simulated schedule 506 at ``--active 40`` (period 1 s, 15 units), on the main it was found
on (04df0f7): cp2.1 leased agent-2 (alone, nothing a period) and crashed; cp0.1 led and
leased agent-1 7 a period, and crashed too; etcd was wiped (the epoch record with it). cp2.2
took over with no record; agent-2 came back holding cp2.1's lease, "1 agent", and cp2.2
took that for the whole fleet and leased agent-2 all 15 while agent-1, behind cp1 cut off
from etcd, spent cp0.1's 7 until its horizon: 50 in a 2 s window against 45. Without a
record the leader cannot tell which earlier leader leased last: an agent back naming the
epoch of a lease it holds means it warms up until the horizon (what the agents back held
is theirs, the rest is kept aside); a new fleet, where nobody holds a lease, is leased at once.
"""

from __future__ import annotations

from mission_control.client.policy import FleetLimits, default_policy

from tests.support.lease_leader import START, TakingLeader

POLICY = default_policy(
    "shared",
    rate_limit_requests=30,
    rate_limit_window_secs=2.0,
    fleet=FleetLimits(rate_limit=True, lease_secs=1.0, unleased_secs=10.0),
)
UNITS = 15.0


class Leader(TakingLeader):
    """A leader that just took over (epoch 9) after the store lost the epoch record."""

    def __init__(self) -> None:
        super().__init__(POLICY, 9, wanted=30.0, leased_before=False)  # no record: nothing says

    def units(self, holder: str) -> list[float]:
        return [lease.units for lease in self.sent.get(holder, [])]


def test_an_agent_back_with_a_lease_the_leader_has_no_record_of_keeps_the_rest_aside() -> None:
    leader = Leader()
    leader.back("agent-2", held_epoch=4100, agents_known=1, safe_units=0.0)
    leader.run(START + 5.0)
    # agent-2 held nothing a period: another leader's agents may spend the whole limit
    assert leader.units("agent-2") and set(leader.units("agent-2")) == {0.0}
    # until the horizon: no agent spends an earlier lease after it
    leader.run(START + 20.0)
    assert leader.units("agent-2")[-1] == UNITS


def test_what_the_agents_back_held_is_theirs_meanwhile() -> None:
    leader = Leader()
    leader.back("agent-2", held_epoch=4100, agents_known=2, safe_units=6.0)
    leader.back("agent-3", held_epoch=4100, agents_known=2, safe_units=2.0)
    leader.run(START + 5.0)
    assert leader.units("agent-2")[-1] + leader.units("agent-3")[-1] == 8.0


def test_a_new_fleet_is_leased_at_once() -> None:
    leader = Leader()
    leader.back("agent-2", held_epoch=0, agents_known=0, safe_units=0.0)
    leader.run(START + 1.6)
    assert leader.units("agent-2")[-1] == UNITS
