"""I4 for an agent gone from a follower without a goodbye (schedules 36 and 40): it may be
alive and cut off, spending its last lease until its horizon, and only the follower knew
it; the leader must not lease that part to the others meanwhile."""

from __future__ import annotations

import asyncio

from . import vloop
from .lease_fleet import LIMIT, PERIOD, UNITS, WINDOW, budgets, leading_world, loaded, spending, worst_window
from .schedule import quiet_logs


def test_an_agent_cut_off_from_a_follower_keeps_its_part_out_of_the_split() -> None:
    async def main() -> None:
        world, _ = await leading_world()
        follower = await world.start_replica("cp1")
        await loaded(world, follower)
        # one agent reaches the leader only, two the follower only
        world.partitions |= {frozenset(("direct", "cp1")), frozenset(("a", "cp0")), frozenset(("b", "cp0"))}
        agents, admitted, driver = await spending(world, ("direct", "a", "b"))  # a third each
        assert agents[2].replica is follower

        cut_at = world.now
        world.partitions |= {frozenset(("b", "cp0")), frozenset(("b", "cp1"))}
        agents[2].break_link()  # b spends its last lease, cut off from every replica
        await asyncio.sleep(16 * PERIOD)
        driver.cancel()
        after = [t for t in admitted if t > cut_at]
        assert worst_window(after, WINDOW) <= LIMIT + UNITS, worst_window(after, WINDOW)
        budget = budgets(agents)[2]
        assert budget is not None and not budget.leased and budget.last_units > 0  # still spending

    with quiet_logs():
        vloop.run(main())
