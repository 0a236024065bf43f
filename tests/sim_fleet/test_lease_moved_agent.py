"""I4 for an agent that leaves a follower for the new leader while it warms up: the
follower kept it as gone without a goodbye (holding the earlier leader's lease); once it is
connected to the leader it is counted there only, so the leader does not take it for two
agents back of the earlier count and end the warm-up while z, cut off, still spends the
earlier leader's lease. Nor are the units x holds of the new leader's own lease (passed
on by the follower before x moved) taken for what it was spending of the earlier leader's:
they are split from the new leader's pool already."""

from __future__ import annotations

import asyncio

from . import vloop
from .lease_fleet import LIMIT, PERIOD, UNITS, WINDOW, budgets, leading_world, loaded, spending, worst_window
from .schedule import quiet_logs
from .test_scenarios import _until


def test_an_agent_moved_from_a_follower_to_the_new_leader_is_counted_once() -> None:
    async def main() -> None:
        world, first = await leading_world()
        nxt, other = await world.start_replica("cp1"), await world.start_replica("cp2")
        await loaded(world, nxt, other)
        # z reaches cp0 only; w and x reach cp2 only (x reaches cp1 later)
        cut = {("z", "cp1"), ("z", "cp2"), ("w", "cp0"), ("w", "cp1"), ("x", "cp0"), ("x", "cp1")}
        world.partitions |= {frozenset(pair) for pair in cut}
        agents, admitted, driver = await spending(world, ("z", "w", "x"))
        assert agents[0].replica is first and agents[2].replica is other

        crashed_at = world.now
        other.store.cut = True  # cp2 does not take over
        world.crash(first)  # z spends cp0's last lease, cut off from every replica
        await _until(world, lambda: nxt.plane.leading, "cp1 leads")
        other.store.cut = False
        await asyncio.sleep(4 * PERIOD)  # cp2's relay reaches cp1
        world.partitions -= {frozenset(("x", "cp1"))}
        world.partitions |= {frozenset(("x", "cp2"))}
        agents[2].break_link()  # x leaves cp2 for cp1
        await asyncio.sleep(24 * PERIOD)
        driver.cancel()
        after = [t for t in admitted if t > crashed_at]

        assert worst_window(after, WINDOW) <= LIMIT + UNITS, worst_window(after, WINDOW)
        budget = budgets(agents)[0]
        assert budget is not None and not budget.leased and budget.last_units > 0  # z still spends

    with quiet_logs():
        vloop.run(main())
