"""A follower speaking for an agent an earlier leader counted and for a new one (I4): an
open defect, shown here until it is fixed.

A follower sends one demand for all its agents: ``agents`` counts them all, while
``agents_known`` and ``held_epoch`` are the highest of theirs. A new leader warming up
takes the follower's agents for agents of the last earlier count, so a new agent behind it
stands for one of that count that is not back: the warm-up ends while that one still
spends its last lease. Here the earlier leader counted x and z; z is cut off, spending 2 a
period of 4; x comes back behind a follower beside y, a new agent, and the new leader
leases the follower the whole 4: 6 a period. Telling the leader how many of a follower's
agents the earlier count names takes either a per-agent field (none may be added) or a
follower that says no count when its agents are mixed (warming up to the horizon then).
"""

from __future__ import annotations

import pytest
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.relay_leases import FollowerLeases

from tests.support.lease_leader import START, TakingLeader, earlier

POLICY = default_policy(
    "shared",
    rate_limit_requests=16,
    rate_limit_window_secs=2.0,
    fleet=FleetLimits(rate_limit=True, lease_secs=0.5, unleased_secs=30.0),
)
UNITS = 4.0  # 16 per 2 s, leased per 0.5 s


class Leader(TakingLeader):
    def __init__(self, epoch: int, recorded: int) -> None:
        super().__init__(POLICY, epoch, wanted=8.0, **earlier(recorded))


@pytest.mark.xfail(strict=True, reason="a follower's new agent stands for an agent of the earlier count")
def test_a_new_agent_behind_a_follower_does_not_end_the_warm_up() -> None:
    first = Leader(epoch=5, recorded=0)  # a new fleet: x and z leased at once
    first.back("x", held_epoch=0, agents_known=0, safe_units=0.0)
    first.back("z", held_epoch=0, agents_known=0, safe_units=0.0)
    first.run(START + 1.6)
    first.leaser.forget("z")  # cut off: it spends its last lease until its horizon
    first.run(START + 3.1)
    spent_by_z = first.sent["z"][-1].units
    x_held = first.sent["x"][-1]
    assert (spent_by_z, x_held.agents) == (2.0, 2)

    leases = FollowerLeases(lambda service, resource: 30.0, lambda: START)
    for agent, held in (("x", x_held), ("y", None)):
        leases.demand(
            agent,
            pb.CapacityDemand(
                service="shared",
                resource="shared.requests",
                wanted=8.0,
                agents_known=held.agents if held else 0,
                safe_units=held.units if held else 0.0,
                held_epoch=5 if held else 0,
            ),
        )
    report = leases.report()
    assert report is not None
    second = Leader(epoch=7, recorded=5)
    for demand in report.demand.demands:
        second.leaser.demand("replica.f", demand)
    second.run(START + 2.1)
    for lease in second.sent["replica.f"]:
        assert lease.units + spent_by_z <= UNITS, lease.period
