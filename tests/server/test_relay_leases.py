"""A follower keeps what an agent gone from it without a goodbye may still spend (I4), on
an injected clock: the leader leases nobody else that part until the agent's horizon."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.lease_epoch import EPOCH_SKEW_MS, MAX_EPOCH, LeaseEpochs
from mission_control.server.relay_leases import FollowerLeases

from .test_capacity import HORIZON, RESOURCE, UNITS, Leader

WALL = 1_800_000_000.0  # wall seconds


class Follower:
    """A follower's lease book on the leader's clock, relaying to ``leader`` as holder "f"."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self.leases = FollowerLeases(leader.leaser.hold_secs, lambda: leader.now)
        self.got: dict[str, float] = {}

    def agent(self, name: str, wanted: float = 100.0, safe_units: float = 0.0, **fields: object) -> None:
        demand = pb.CapacityDemand(
            service="shared",
            resource=RESOURCE,
            wanted=wanted,
            safe_units=safe_units,
            **fields,  # type: ignore[arg-type]
        )
        self.leases.demand(name, demand)

    def relay(self) -> None:
        """The demand up to the leader, the leader's last lease for it split down."""
        report = self.leases.report()
        if report is not None:
            for demand in report.demand.demands:
                self.leader.leaser.demand("f", demand)
        sent = self.leader.sent.get("f")
        if sent:
            self.got = {agent: lease.units for agent, lease in self.leases.split(sent[-1])}

    def run(self, until: float) -> None:
        while self.leader.now < until:
            self.leader.run(round(self.leader.now + 0.05, 6))
            self.relay()


def test_an_agent_gone_from_a_follower_without_a_goodbye_is_kept_until_its_horizon() -> None:
    leader = Leader(5000.0)  # a fresh fleet: one agent on the leader, two behind a follower
    follower = Follower(leader)
    leader.report("direct")
    follower.agent("a")
    follower.agent("b")
    follower.run(5002.0)
    share = follower.got["b"]
    assert share == pytest.approx(UNITS / 3, abs=1)
    # b is cut off: it spends its last lease; nobody else may be leased that part
    follower.agent("b", safe_units=share)
    follower.leases.agent_left("b")
    follower.run(5004.0)
    assert list(follower.got) == ["a"]
    assert leader.sent["direct"][-1].units + follower.got["a"] + share <= UNITS + 1e-9
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert (demand.agents, demand.safe_units) == (2, pytest.approx(share))
    # past its horizon (H + two periods) a cut-off agent refuses: its part is split again
    follower.run(5002.0 + HORIZON + 1.0)
    assert leader.sent["direct"][-1].units + follower.got["a"] == pytest.approx(UNITS, abs=1)
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert demand.agents == 1


def test_an_agent_that_says_goodbye_or_comes_back_is_not_kept() -> None:
    leader = Leader(5000.0)
    follower = Follower(leader)
    for name in ("a", "b", "c@1"):
        follower.agent(name, safe_units=10.0)
    follower.agent("b", leaving=True)  # a goodbye first: it spends nothing more
    follower.leases.agent_left("b")
    follower.leases.agent_left("a")
    follower.agent("a", safe_units=10.0)  # back here: kept as itself again, not twice
    follower.leases.agent_left("c@1")
    follower.leases.release_predecessors("c", keep="c@2")  # restarted: the old process is gone
    assert not follower.leases.kept.get(("shared", RESOURCE))
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert (demand.agents, demand.safe_units) == (1, 10.0)


def test_the_leader_keeps_room_for_what_a_follower_may_spend_without_a_lease() -> None:
    """The follower's part is at least what its agents may spend unleased (the kept ones'
    too): others grow into it only once that is no longer so."""
    leader = Leader(5000.0)
    leader.report("direct")
    leader.report("f", wanted=5.0, agents=1, agents_wanted=[5.0], safe_units=30.0)
    leader.run(5001.0)
    assert leader.sent["direct"][-1].units + 30.0 <= UNITS + 1e-9
    leader.report("f", wanted=5.0, agents=1, agents_wanted=[5.0], safe_units=5.0)
    leader.run(5002.0)
    assert leader.sent["direct"][-1].units == pytest.approx(UNITS - 5.0, abs=1)


def test_a_follower_whose_agents_are_all_gone_is_leased_nothing_more() -> None:
    """Its last agent cut off: kept until the horizon (a report goes up when that passes,
    with no agent reporting meanwhile), then the follower says it shares the limit no more."""
    leader = Leader(5000.0)
    follower = Follower(leader)
    leader.report("direct")
    follower.agent("a", safe_units=10.0)
    follower.relay()
    follower.leases.agent_left("a")
    follower.run(5002.0)
    assert leader.leaser.limits[("shared", RESOURCE)].holders["f"].safe_units == 10.0
    assert not follower.leases.dirty
    leader.now += HORIZON
    assert follower.leases.dirty  # the horizon passed: the leader must hear of it
    follower.run(leader.now + 1.0)
    assert "f" not in leader.leaser.limits[("shared", RESOURCE)].holders
    assert leader.sent["direct"][-1].units == pytest.approx(UNITS)
    assert follower.leases.report() is None  # said once


def test_a_follower_reports_the_highest_epoch_its_agents_hold() -> None:
    """A leader below it moves above it (its leases would be ignored otherwise)."""
    leader = Leader(5000.0)
    follower = Follower(leader)
    follower.agent("a", held_epoch=40)
    follower.agent("b", held_epoch=90)
    follower.agent("c")
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert demand.held_epoch == 90


@pytest.mark.parametrize("hostile", [2**62, 2**64 - 1, MAX_EPOCH, round(WALL * 1000) + EPOCH_SKEW_MS])
def test_a_claim_out_of_range_does_not_hide_another_agents(hostile: int) -> None:
    """One agent claiming an epoch no record may hold (the leader refuses it) was passed on
    alone, as the highest: the leader never moved above an honest agent's claim (clock +
    200 s: a record put ahead, then lost) and every agent behind the follower ignored its
    leases for the rest of its term. The follower passes on the highest claim in range."""
    leader = Leader(5000.0)
    follower = FollowerLeases(leader.leaser.hold_secs, lambda: leader.now, wall=lambda: WALL)
    honest = round(WALL * 1000) + 200_000
    for name, held in (("honest", honest), ("hostile", hostile), ("plain", 0)):
        demand = pb.CapacityDemand(service="shared", resource=RESOURCE, wanted=10, held_epoch=held)
        follower.demand(name, demand)
    (demand,) = follower.report().demand.demands  # type: ignore[union-attr]
    assert demand.held_epoch == honest

    async def write(key: str, value: bytes) -> bool:
        return True

    async def lead() -> int:
        epochs = LeaseEpochs("/p/fleet-lease-epoch", "r0", lambda: 5, lambda: True, write, wall=lambda: WALL)
        assert epochs.agent_holds(demand.held_epoch)
        epochs.may_lease(WALL + 1.0)  # the move is recorded...
        await asyncio.sleep(0)
        return epochs.epoch()  # ...and leases carry it

    assert asyncio.run(lead()) == honest + 1
