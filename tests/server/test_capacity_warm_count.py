"""A count a warming-up leader announces is not the whole fleet (I4).

Simulated schedule 177 at ``--active 40`` (period 1 s, 15 units): cp1.2 leased agent-0,
alone, all 15 and crashed; agent-0 was cut off from every replica and spent its last lease
each period. cp0.1 took over, warming up (the record named cp1.2's epoch), and leased
agent-1, a new agent, nothing a period, announcing "1 agent". After a wipe cp1.3 took
over; agent-1 came back holding cp0.1's lease (the record's epoch) of "1 agent", and cp1.3
took that for everyone back and leased agent-1 the whole 15 beside agent-0's 15: 61 in a
2 s window against 45. A leader that does not know how many agents the earlier leader
leased now announces one more than it knows of, so a successor keeps warming up.
"""

from __future__ import annotations

from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from tests.support.lease_leader import TakingLeader, earlier

POLICY = default_policy(
    "shared",
    rate_limit_requests=30,
    rate_limit_window_secs=2.0,
    fleet=FleetLimits(rate_limit=True, lease_secs=1.0, unleased_secs=30.0),
)
UNITS = 15.0


class Leader(TakingLeader):
    """A leader that just took over in ``epoch``, the record naming ``recorded`` (0: none)."""

    def __init__(self, epoch: int, recorded: int) -> None:
        super().__init__(POLICY, epoch, wanted=30.0, **earlier(recorded))

    def run(self, secs: float) -> None:  # type: ignore[override]
        super().run(self.now + secs)

    def last(self, holder: str) -> pb.CapacityLease:
        return self.sent[holder][-1]


def test_a_successor_does_not_take_a_warming_up_leaders_count_for_everyone() -> None:
    warming = Leader(epoch=7, recorded=5)  # the record: epoch 5 leased, its agents not back
    warming.back("agent-1", held_epoch=0, agents_known=0, safe_units=0.0)  # a new agent
    warming.run(1.6)
    lease = warming.last("agent-1")
    assert lease.units == 0.0  # agent-0 of epoch 5 may be spending all 15
    # the agent keeps that count (at least one) and reports it to the next leader
    announced = max(1, lease.agents)
    successor = Leader(epoch=9, recorded=7)
    successor.back("agent-1", held_epoch=7, agents_known=announced, safe_units=0.0)
    successor.run(3.0)
    assert [lease.units for lease in successor.sent["agent-1"]] == [0.0, 0.0, 0.0]


def test_a_new_fleets_count_is_everyone() -> None:
    """No record, no agent holding a lease: a new fleet, leased at once, and its count
    ends a successor's warm-up as soon as its agent is back."""
    first = Leader(epoch=7, recorded=0)
    first.back("agent-1", held_epoch=0, agents_known=0, safe_units=0.0)
    first.run(1.6)
    lease = first.last("agent-1")
    assert (lease.units, lease.agents) == (UNITS, 1)
    successor = Leader(epoch=9, recorded=7)
    successor.back("agent-1", held_epoch=7, agents_known=lease.agents, safe_units=UNITS)
    successor.run(1.6)
    assert successor.last("agent-1").units == UNITS


def test_a_new_agent_back_does_not_stand_for_one_of_the_earlier_count_not_back() -> None:
    """A leader counted x and z (cut off, spending its last lease); its successor, warming
    up, has x back and y, a new agent: three may be spending, not the two that leader
    counted. Announced as two, the next leader ended its warm-up once x and y were back and
    leased them the whole limit beside z's lease."""
    first = Leader(epoch=5, recorded=0)  # a new fleet: x and z leased at once
    first.back("x", held_epoch=0, agents_known=0, safe_units=0.0)
    first.back("z", held_epoch=0, agents_known=0, safe_units=0.0)
    first.run(1.6)
    spent_by_z = min(lease.units for lease in first.sent["z"])  # again and again, cut off
    assert spent_by_z > 0.0
    first.leaser.forget("z")
    first.run(2.0)
    x_held = first.last("x")
    assert x_held.agents == 2  # x and z (kept aside)

    second = Leader(epoch=7, recorded=5)
    second.back("x", held_epoch=5, agents_known=x_held.agents, safe_units=x_held.units)
    second.back("y", held_epoch=0, agents_known=0, safe_units=0.0)  # a new agent
    second.run(1.6)
    assert second.last("x").agents >= 3  # x, y and z, not back

    third = Leader(epoch=9, recorded=7)
    for holder in ("x", "y"):
        told = second.last(holder)
        third.back(holder, held_epoch=7, agents_known=told.agents, safe_units=told.units)
    third.run(3.0)
    for period in {lease.period for leases in third.sent.values() for lease in leases}:
        leased = sum(
            lease.units for leases in third.sent.values() for lease in leases if lease.period == period
        )
        assert leased + spent_by_z <= UNITS, (period, leased)
