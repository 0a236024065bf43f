"""I4 for an agent that moves between replicas while it spends its last lease.

* From a follower to another follower that reaches etcd but never the leader: the second
  one lists it in the fleet roster, but nobody counts it there, so the first keeps what it
  may spend aside until its horizon (it must not hand that to its other agents).
* From the leader to a linked follower: once the follower reports it, the leader counts it
  through the follower and no longer keeps its old share aside as well (the fleet is not
  held below its limit for the agent's horizon).
"""

from __future__ import annotations

import asyncio

from mission_control.server.relayed_agents import name_of

from . import vloop
from .lease_fleet import (
    LIMIT,
    PERIOD,
    SERVICE,
    UNITS,
    WINDOW,
    budgets,
    leading_world,
    loaded,
    spending,
    worst_window,
)
from .schedule import World, quiet_logs
from .test_scenarios import _until

RESOURCE = f"{SERVICE}.requests"


def _only(world: World, agent: str, replica: str) -> None:
    """``agent`` reaches ``replica`` only (of cp0, cp1, cp2)."""
    for name in ("cp0", "cp1", "cp2"):
        pair = frozenset((agent, name))
        if name == replica:
            world.partitions.discard(pair)
        else:
            world.partitions.add(pair)


def test_an_agent_moved_to_a_follower_cut_off_from_the_leader_stays_kept_aside() -> None:
    async def main() -> None:
        world, _ = await leading_world()
        world.partitions.add(frozenset(("cp2", "cp0")))  # cp2 reaches etcd, never the leader
        linked, cut_off = await world.start_replica("cp1"), await world.start_replica("cp2")
        await loaded(world, linked, cut_off)
        for name, replica in (("k", "cp1"), ("l", "cp0"), ("m", "cp1")):
            _only(world, name, replica)
        agents, admitted, driver = await spending(world, ("k", "l", "m"))
        assert agents[2].replica is linked

        moved_at = world.now
        _only(world, "m", "cp2")
        agents[2].break_link()  # m leaves cp1 for cp2, which no leader counts
        await _until(world, lambda: agents[2].replica is cut_off, "m on cp2")
        await asyncio.sleep(24 * PERIOD)
        driver.cancel()
        after = [t for t in admitted if t > moved_at]

        assert worst_window(after, WINDOW) <= LIMIT + UNITS, worst_window(after, WINDOW)
        budget = budgets(agents)[2]
        assert budget is not None and budget.last_units > 0  # m still spends its last lease

    with quiet_logs():
        vloop.run(main())


def test_the_leader_releases_its_share_of_an_agent_gone_to_a_follower_that_reports_it() -> None:
    async def main() -> None:
        world, leader = await leading_world()
        follower = await world.start_replica("cp1")
        await _until(
            world, lambda: follower.plane.relay is not None and follower.plane.relay.connected, "linked"
        )
        for name, replica in (("k", "cp1"), ("l", "cp0"), ("m", "cp0")):
            _only(world, name, replica)
        agents, admitted, driver = await spending(world, ("k", "l", "m"))
        limit = leader.plane.capacity.limits[(SERVICE, RESOURCE)]

        moved_at = world.now
        _only(world, "m", "cp1")
        agents[2].break_link()  # m leaves the leader for cp1
        await _until(world, lambda: agents[2].replica is follower, "m on cp1")
        relay = follower.plane.relay
        assert relay is not None
        demands = lambda: relay.leases.demands.get((SERVICE, RESOURCE), {})  # noqa: E731
        await _until(world, lambda: any(name_of(a) == "m" for a in demands()), "cp1 has m's demand")
        # counted through cp1 now: kept aside here no longer (within a few periods, not H)
        await _until(
            world,
            lambda: not any(name_of(h) == "m" for h in limit.absent),
            "m released here",
            within=4 * PERIOD,
        )
        await asyncio.sleep(8 * PERIOD)
        driver.cancel()
        after = [t for t in admitted if t > moved_at]
        assert worst_window(after, WINDOW) <= LIMIT + UNITS, worst_window(after, WINDOW)

    with quiet_logs():
        vloop.run(main())
