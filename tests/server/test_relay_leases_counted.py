"""An agent that moves between followers while it spends its last lease, on an injected
clock: the follower it left keeps what it may spend aside until the leader says it counts
the agent elsewhere (``CapacityLease.counted_elsewhere``), which it does only once another
follower's demand named the agent as one it includes (``CapacityDemand.counted``). The
fleet roster lists the agent under its new follower before its demand reached the leader
through it, and that follower's link may break meanwhile: counted by nobody then (I4)."""

from __future__ import annotations

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.inbound import bounded_demand

from .test_capacity import RESOURCE, UNITS, Leader
from .test_relay_leases import Follower

LIMIT = ("shared", RESOURCE)


class Named(Follower):
    """A follower relaying to ``leader`` as holder ``name``; ``linked``: its link is up."""

    def __init__(self, leader: Leader, name: str) -> None:
        super().__init__(leader)
        self.name = name
        self.linked = True

    def relay(self) -> None:
        if not self.linked:
            return
        report = self.leases.report()
        if report is not None:
            for demand in report.demand.demands:
                self.leader.leaser.demand(self.name, demand)
        sent = self.leader.sent.get(self.name)
        if sent:
            self.got = {agent: lease.units for agent, lease in self.leases.split(sent[-1])}

    def cut(self) -> None:
        """Its link to the leader breaks: the leader keeps what it said its agents may spend."""
        self.linked = False
        self.leader.gone.add(self.name)
        self.leader.leaser.forget(self.name)


def _run(leader: Leader, followers: list[Named], until: float) -> None:
    while leader.now < until:
        leader.run(round(leader.now + 0.05, 6))
        for follower in followers:
            follower.relay()


def _fleet() -> tuple[Leader, Named, Named]:
    leader = Leader(5000.0)  # a fresh fleet: l on the leader, k and m behind f1, n behind f2
    f1, f2 = Named(leader, "f1"), Named(leader, "f2")
    leader.report("l")
    f1.agent("k")
    f1.agent("m")
    f2.agent("n")
    _run(leader, [f1, f2], 5002.0)
    for follower, names in ((f1, ("k", "m")), (f2, ("n",))):
        for name in names:  # each would spend its last lease without a new one
            follower.agent(name, safe_units=follower.got[name])
    _run(leader, [f1, f2], 5002.5)
    return leader, f1, f2


def _leased(leader: Leader, *followers: Named) -> float:
    """What the leader's last leases let every agent still linked spend in one period."""
    return leader.sent["l"][-1].units + sum(sum(f.got.values()) for f in followers if f.linked)


def test_an_agent_moved_to_a_follower_whose_link_breaks_before_its_demand_arrives_stays_kept() -> None:
    leader, f1, f2 = _fleet()
    share = f1.got["m"]
    assert share > 1
    f1.leases.agent_left("m")  # m's stream to f1 broke: f1 keeps its last lease aside
    # m connects to f2, and the roster lists it there (the code before let f1 go on that)
    f1.leases.elsewhere = lambda: {("m", "\0")}  # type: ignore[attr-defined]
    f2.agent("m", safe_units=share)  # its demand reached f2 ...
    f2.cut()  # ... but f2's link broke before f2 passed it on: the leader never heard of m
    _run(leader, [f1, f2], 5004.0)
    assert "m" in f1.leases.kept[LIMIT]
    kept_f2 = leader.leaser.limits[LIMIT].absent["f2"][0]
    # m spends its last lease; f2's agents what f2 said they may; the rest of the fleet its leases
    assert _leased(leader, f1) + share + kept_f2 <= UNITS + 1e-9


def test_an_agent_moved_to_a_linked_follower_is_let_go_once_that_follower_names_it() -> None:
    leader, f1, f2 = _fleet()
    share = f1.got["m"]
    f1.leases.agent_left("m")
    f2.agent("m", safe_units=share)
    # f2's next demand names m with what it may spend; the leader tells f1 it counts m there
    _run(leader, [f1, f2], 5003.5)
    assert "m" not in f1.leases.kept.get(LIMIT, {})
    assert _leased(leader, f1, f2) <= UNITS + 1e-9
    assert leader.leaser.limits[LIMIT].holders["f1"].agents == 1  # m is not kept there twice
    # and f2's link breaking now leaves m counted: in what the leader keeps for f2
    f2.cut()
    _run(leader, [f1, f2], 5005.0)
    assert leader.leaser.limits[LIMIT].absent["f2"][0] >= share + f2.got.get("n", 0.0) - 1e-9
    assert _leased(leader, f1) + leader.leaser.limits[LIMIT].absent["f2"][0] <= UNITS + 1e-9


def test_two_followers_keeping_one_agent_do_not_let_each_other_go() -> None:
    leader, f1, f2 = _fleet()
    share = f1.got["m"]
    f1.leases.agent_left("m")
    f2.agent("m", safe_units=share)
    _run(leader, [f1, f2], 5003.5)  # counted through f2: f1 lets it go
    f2.leases.agent_left("m")  # cut off from f2 as well: f2 keeps it now
    _run(leader, [f1, f2], 5005.0)
    assert "m" in f2.leases.kept[LIMIT]
    (demand,) = f2.leases.report().demand.demands if f2.leases.dirty else [None]  # type: ignore[union-attr]
    assert demand is None or "m" not in demand.counted  # kept, not named


def test_a_demand_names_the_agents_whose_demands_it_includes_and_only_a_replica_may() -> None:
    leader = Leader(5000.0)
    follower = Named(leader, "f")
    follower.agent("a@1", safe_units=3.0)
    follower.agent("b@1", safe_units=4.0)
    follower.leases.agent_left("b@1")
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert list(demand.counted) == ["a@1"]  # b@1 is kept, not counted here
    raw = pb.CapacityDemand(service="shared", resource=RESOURCE, wanted=1.0, counted=["x", "y"])
    agent = bounded_demand(raw, replica=False)
    assert agent is not None and not agent.counted
    relayed = bounded_demand(raw, replica=True)
    assert relayed is not None and list(relayed.counted) == ["x", "y"]


def test_an_older_follower_that_names_nobody_releases_nothing_before_the_horizon() -> None:
    leader = Leader(5000.0)
    leader.report("m")
    leader.report("l")
    leader.run(5002.0)
    share = leader.sent["m"][-1].units
    leader.report("m", safe_units=share)
    leader.gone.add("m")
    leader.leaser.forget("m")  # m left the leader for a follower
    demand = {"agents": 1, "agents_wanted": [5.0], "safe_units": share}
    leader.report("f", wanted=5.0, **demand)  # it does not say whom it counts
    assert leader.leaser.limits[LIMIT].absent["m"][0] == pytest.approx(share)
    leader.report("f", wanted=5.0, counted=["m"], **demand)  # it counts m, with its share
    assert "m" not in leader.leaser.limits[LIMIT].absent
