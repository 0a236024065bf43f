"""A holder whose stream comes back and breaks again before the leader's next lease: what
was kept aside for its agents at the first break stays aside (they still spend their last
leases), whatever the new stream claimed; leases sent on the new stream replace it."""

from __future__ import annotations

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb

from tests.server.test_capacity import HORIZON, RESOURCE, UNITS, Leader


def _relayed(leader: Leader, wanted: float = 50.0) -> None:
    """The follower r2 speaks for two agents; its claim is what they hold (never leased on
    a new stream, the leader believes none of it)."""
    demand = pb.CapacityDemand(
        service="shared", resource=RESOURCE, wanted=wanted, agents=2, agents_wanted=[wanted / 2] * 2,
        safe_units=UNITS / 2,
    )  # fmt: skip
    leader.leaser.demand("r2", demand)


def _steady(leader: Leader) -> float:
    """Leader-side agent ``a`` and follower r2 share the limit; r2's last lease."""
    leader.report("a", wanted=100.0)
    _relayed(leader)
    leader.run(leader.now + HORIZON + 31.0)  # past any earlier leader's leases
    lease = leader.sent["r2"][-1].units
    assert lease >= UNITS / 4
    return lease


def test_a_link_back_and_broken_again_before_a_lease_keeps_its_agents_reserve() -> None:
    leader = Leader(7000.0)
    lease = _steady(leader)
    leader.leaser.forget("r2")  # the link breaks: its agents spend their last leases
    leader.run(leader.now + 1.0)
    assert leader.leaser.usage()[0].kept_aside == pytest.approx(lease)
    # back for a moment: a first demand on a new stream, then broken before a lease is sent
    _relayed(leader)
    leader.leaser.forget("r2")
    cut = leader.now
    leader.run(cut + 1.0)
    assert leader.leaser.usage()[0].kept_aside == pytest.approx(lease)
    assert leader.sent["a"][-1].units <= UNITS - lease + 1e-6
    # kept until the horizon of the leases its agents hold, then given back
    leader.run(cut + HORIZON + 1.0)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)


def test_a_link_back_keeps_the_reserve_in_the_split_until_its_own_leases_replace_it() -> None:
    leader = Leader(8000.0)
    lease = _steady(leader)
    leader.leaser.forget("r2")
    leader.run(leader.now + 1.0)
    leader.gone.add("r2")  # nothing reaches it until it is back
    _relayed(leader, wanted=2.0)  # back, asking little: its agents may still spend their last
    leader.gone.discard("r2")
    first = len(leader.sent["r2"])
    leader.run(leader.now + 0.5)  # the first lease on the new stream
    assert len(leader.sent["r2"]) == first + 1
    # that lease may be missed: the agents spend what they held, so the others get no more
    # than what is left of it
    assert leader.sent["a"][-1].units <= UNITS - lease + 1e-6
    leader.run(leader.now + 2.0)  # leases on the new stream replace it: a gets the rest
    assert leader.sent["a"][-1].units == pytest.approx(UNITS - leader.sent["r2"][-1].units, abs=1)
    assert leader.sent["r2"][-1].units < lease
