"""A follower speaking for agents an earlier leader counted and for others does not end a
new leader's warm-up early (I4).

A follower sends one demand for all its agents: ``agents`` counts them all, ``agents_known``
and ``held_epoch`` are the highest of theirs; ``agents_held`` says how many of them hold a
lease of that epoch and ``held_known`` the count those heard. A new leader counts only
those as back: a new agent behind the follower does not stand for one of the earlier count
still spending its last lease. Here the earlier leader counted x and z; z is cut off,
spending 2 a period of 4; x comes back behind a follower beside y, a new agent. A follower
that says nothing of that (an older one) is taken to speak for one agent of the count.
"""

from __future__ import annotations

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


def first_term() -> tuple[float, pb.CapacityLease]:
    """Epoch 5 leases x and z; z is cut off: what z spends a period, and x's last lease."""
    first = Leader(epoch=5, recorded=0)  # a new fleet: x and z leased at once
    first.back("x", held_epoch=0, agents_known=0, safe_units=0.0)
    first.back("z", held_epoch=0, agents_known=0, safe_units=0.0)
    first.run(START + 1.6)
    first.leaser.forget("z")  # cut off: it spends its last lease until its horizon
    first.run(START + 3.1)
    spent_by_z = first.sent["z"][-1].units
    x_held = first.sent["x"][-1]
    assert (spent_by_z, x_held.agents) == (2.0, 2)
    return spent_by_z, x_held


def agent_demand(held: pb.CapacityLease | None, epoch: int = 5) -> pb.CapacityDemand:
    """An agent's demand: holding ``held`` (of ``epoch``), or new (None)."""
    return pb.CapacityDemand(
        service="shared",
        resource="shared.requests",
        wanted=8.0,
        agents_known=held.agents if held else 0,
        safe_units=held.units if held else 0.0,
        held_epoch=epoch if held else 0,
    )


def follower_demand(agents: dict[str, pb.CapacityDemand]) -> pb.CapacityDemand:
    """The one demand a follower sends for ``agents``."""
    leases = FollowerLeases(lambda service, resource: 30.0, lambda: START)
    for agent, demand in agents.items():
        leases.demand(agent, demand)
    report = leases.report()
    assert report is not None
    (demand,) = report.demand.demands
    return demand


def second_term(demand: pb.CapacityDemand) -> list[pb.CapacityLease]:
    """What the leader of epoch 7 (its record: epoch 5) leases the follower sending ``demand``."""
    second = Leader(epoch=7, recorded=5)
    second.leaser.demand("replica.f", demand)
    second.run(START + 2.1)
    return second.sent["replica.f"]


def test_a_new_agent_behind_a_follower_does_not_end_the_warm_up() -> None:
    spent_by_z, x_held = first_term()
    demand = follower_demand({"x": agent_demand(x_held), "y": agent_demand(None)})
    assert (demand.agents, demand.agents_known, demand.agents_held, demand.held_known) == (2, 2, 1, 2)
    leases = second_term(demand)
    assert leases
    for lease in leases:
        assert lease.units + spent_by_z <= UNITS, lease.period
        # x, y and z (not back) may all be spending: a successor must not count two
        assert lease.agents >= 3, lease.period


def test_an_agent_of_an_older_leader_behind_the_follower_stands_for_none_of_the_count() -> None:
    spent_by_z, x_held = first_term()
    # w holds a lease of epoch 3, which counted two agents, of nothing (it spends nothing)
    older = agent_demand(x_held, epoch=3)
    older.safe_units = 0.0
    demand = follower_demand({"x": agent_demand(x_held), "w": older})
    assert (demand.held_epoch, demand.agents_held, demand.held_known) == (5, 1, 2)
    for lease in second_term(demand):
        assert lease.units + spent_by_z <= UNITS, lease.period


def test_the_warm_up_ends_when_every_agent_counted_is_back_behind_the_follower() -> None:
    _, x_held = first_term()
    z_held = pb.CapacityLease()
    z_held.CopyFrom(x_held)  # z came back too: the two the earlier leader counted
    demand = follower_demand({"x": agent_demand(x_held), "z": agent_demand(z_held), "y": agent_demand(None)})
    assert (demand.agents, demand.agents_held) == (3, 2)
    leases = second_term(demand)
    assert leases[-1].units == UNITS  # the whole limit, well before the earlier horizon


def test_an_agent_of_the_count_the_follower_keeps_is_not_counted_back_there() -> None:
    """A kept agent may be connected to another replica (the new leader itself), counted
    there: counted here too it would stand for an agent still cut off. What it may spend
    is kept aside here all the same."""
    _, x_held = first_term()
    leases = FollowerLeases(lambda service, resource: 30.0, lambda: START)
    for agent, demand in (
        ("x", agent_demand(x_held)),
        ("z", agent_demand(x_held)),
        ("y", agent_demand(None)),
    ):
        leases.demand(agent, demand)
    leases.agent_left("z")  # gone without a goodbye: the follower keeps what z may spend
    report = leases.report()
    assert report is not None
    (demand,) = report.demand.demands
    assert (demand.agents, demand.agents_held, demand.held_known) == (3, 1, 2)
    # what the agents there hold of the earlier leases (z's kept part too) is all of it
    assert second_term(demand)[-1].units == UNITS


def test_an_older_follower_that_does_not_say_is_taken_for_one_agent_of_the_count() -> None:
    spent_by_z, x_held = first_term()
    demand = follower_demand({"x": agent_demand(x_held), "y": agent_demand(None)})
    demand.ClearField("agents_held")
    demand.ClearField("held_known")
    for lease in second_term(demand):
        assert lease.units + spent_by_z <= UNITS, lease.period
