"""I4 across an etcd wipe: the store loses its data (no fleet-lease epoch record, the leader
key's revision starts over low) and the leader is restarted; the agents, which hold leases
of a high epoch, must take the new leader's leases, and admit no more than the limit plus
one period in any window throughout."""

from __future__ import annotations

import asyncio

from . import vloop
from .lease_fleet import (
    LIMIT,
    PERIOD,
    SERVICE,
    UNITS,
    WINDOW,
    budgets,
    fleet_policy,
    leading_world,
    spending,
    worst_window,
)
from .schedule import quiet_logs
from .test_scenarios import _until
from .world import PREFIX


def test_agents_take_the_leases_of_a_leader_of_a_wiped_store() -> None:
    async def main() -> None:
        # the old store's revisions: well past the new one's
        world, leader = await leading_world(history=300)
        agents, admitted, driver = await spending(world, ("agent-0", "agent-1"))
        before = max(b.epoch for b in budgets(agents))  # type: ignore[union-attr]

        world.etcd.wipe(new_cluster=False)  # etcd restarted empty on its old configuration
        world.crash(leader)
        fresh = await world.start_replica("cp0")
        await _until(world, lambda: fresh.plane.leading, "the restarted replica leads")
        world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", fleet_policy())  # the operator's
        assert fresh.plane.leadership is not None and fresh.plane.leadership.epoch < before

        def split_again() -> bool:
            return all(b is not None and b.epoch > before and b.leased for b in budgets(agents))

        # the fair split resumes within a period of the policy being back: the lease for
        # the next period goes out half a period ahead
        await _until(world, split_again, "both agents leased by the new leader", within=2 * PERIOD)
        wiped_at = world.now
        await asyncio.sleep(8 * PERIOD)
        driver.cancel()
        assert all(b.epoch == fresh.plane.lease_epochs.epoch() for b in budgets(agents))  # type: ignore[union-attr]
        after = [t for t in admitted if t > wiped_at]
        assert len(after) >= 0.8 * UNITS * 4  # the split resumed: the fleet spends its limit
        assert worst_window(admitted, WINDOW) <= LIMIT + UNITS, worst_window(admitted, WINDOW)

    with quiet_logs():
        vloop.run(main())
