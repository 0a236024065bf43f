"""I4 for an agent gone from a follower without a goodbye (schedules 36 and 40): it may be
alive and cut off, spending its last lease until its horizon, and only the follower knew
it; the leader must not lease that part to the others meanwhile."""

from __future__ import annotations

import asyncio

from . import vloop
from .schedule import World, quiet_logs
from .test_lease_wipe import (
    LIMIT,
    PERIOD,
    SERVICE,
    UNITS,
    WINDOW,
    _budgets,
    _drive,
    _fleet_policy,
    worst_window,
)
from .test_scenarios import _until
from .world import PREFIX, Agent


def test_an_agent_cut_off_from_a_follower_keeps_its_part_out_of_the_split() -> None:
    async def main() -> None:
        world = World(0)
        world.calling = False  # the calls here are the driver's
        world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", _fleet_policy())
        leader = await world.start_replica("cp0")
        await _until(world, lambda: leader.plane.leading, "cp0 leads")
        follower = await world.start_replica("cp1")
        await _until(world, lambda: follower.plane.sync.loaded.is_set(), "cp1 loaded")
        # one agent reaches the leader only, two the follower only
        world.partitions |= {frozenset(("direct", "cp1")), frozenset(("a", "cp0")), frozenset(("b", "cp0"))}
        agents = [Agent(world, name, (SERVICE,)) for name in ("direct", "a", "b")]
        world.agents.extend(agents)
        admitted: list[float] = []
        driver = asyncio.get_running_loop().create_task(_drive(world, agents, admitted))
        leased = lambda: all(b is not None and b.leased for b in _budgets(agents))  # noqa: E731
        await _until(world, leased, "every agent leased")
        await asyncio.sleep(8 * PERIOD)  # the split settles: a third each
        assert agents[2].replica is follower

        cut_at = world.now
        world.partitions |= {frozenset(("b", "cp0")), frozenset(("b", "cp1"))}
        agents[2].break_link()  # b spends its last lease, cut off from every replica
        await asyncio.sleep(16 * PERIOD)
        driver.cancel()
        after = [t for t in admitted if t > cut_at]
        assert worst_window(after, WINDOW) <= LIMIT + UNITS, worst_window(after, WINDOW)
        budget = _budgets(agents)[2]
        assert budget is not None and not budget.leased and budget.last_units > 0  # still spending

    with quiet_logs():
        vloop.run(main())
