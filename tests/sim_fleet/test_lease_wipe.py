"""I4 across an etcd wipe: the store loses its data (no fleet-lease epoch record, the leader
key's revision starts over low) and the leader is restarted; the agents, which hold leases
of a high epoch, must take the new leader's leases, and admit no more than the limit plus
one period in any window throughout."""

from __future__ import annotations

import asyncio

from mission_control.client.policy import FleetLimits, ServicePolicy

from . import vloop
from .schedule import World, _policy_json, quiet_logs
from .test_scenarios import _until
from .world import PREFIX, Agent

SERVICE, LIMIT, WINDOW, PERIOD = "shared", 200, 2.0, 0.5
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period
RATE = 60.0  # calls per second each agent tries: two want more than the fleet's limit


def _fleet_policy() -> bytes:
    policy = ServicePolicy(
        service=SERVICE,
        rate_limit_requests=LIMIT,
        rate_limit_window_secs=WINDOW,
        failure_threshold=10**6,
        fleet=FleetLimits(rate_limit=True, lease_secs=PERIOD),
    )
    return _policy_json(policy)


def worst_window(times: list[float], window: float) -> int:
    """The most calls admitted in any window of ``window`` seconds."""
    times = sorted(times)
    worst, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


async def _drive(world: World, agents: list[Agent], admitted: list[float]) -> None:
    while True:
        await asyncio.sleep(1.0 / RATE)
        for agent in agents:
            if agent.alive and agent.spend(SERVICE):
                admitted.append(world.now)


def _budgets(agents: list[Agent]):  # type: ignore[no-untyped-def]
    return [a.view.get(SERVICE).leased.get(f"{SERVICE}.requests") for a in agents]


def test_agents_take_the_leases_of_a_leader_of_a_wiped_store() -> None:
    async def main() -> None:
        world = World(0)
        world.calling = False  # the calls here are the driver's
        for n in range(300):  # the old store's revisions: well past the new one's
            world.etcd.put_raw(f"{PREFIX}/history/{n}", b"x")
        world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", _fleet_policy())
        leader = await world.start_replica("cp0")
        await _until(world, lambda: leader.plane.leading, "cp0 leads")
        agents = [Agent(world, f"agent-{n}", (SERVICE,)) for n in range(2)]
        world.agents.extend(agents)
        admitted: list[float] = []
        driver = asyncio.get_running_loop().create_task(_drive(world, agents, admitted))
        leased = lambda: all(b is not None and b.leased for b in _budgets(agents))  # noqa: E731
        await _until(world, leased, "both agents leased")
        await asyncio.sleep(8 * PERIOD)  # the split settles on the demand
        before = max(b.epoch for b in _budgets(agents))

        world.etcd.wipe(new_cluster=False)  # etcd restarted empty on its old configuration
        world.crash(leader)
        fresh = await world.start_replica("cp0")
        await _until(world, lambda: fresh.plane.leading, "the restarted replica leads")
        world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", _fleet_policy())  # the operator's
        assert fresh.plane.leadership is not None and fresh.plane.leadership.epoch < before

        def split_again() -> bool:
            return all(b is not None and b.epoch > before and b.leased for b in _budgets(agents))

        # the fair split resumes within a period of the policy being back: the lease for
        # the next period goes out half a period ahead
        await _until(world, split_again, "both agents leased by the new leader", within=2 * PERIOD)
        wiped_at = world.now
        await asyncio.sleep(8 * PERIOD)
        driver.cancel()
        assert all(b.epoch == fresh.plane.lease_epochs.epoch() for b in _budgets(agents))
        after = [t for t in admitted if t > wiped_at]
        assert len(after) >= 0.8 * UNITS * 4  # the split resumed: the fleet spends its limit
        assert worst_window(admitted, WINDOW) <= LIMIT + UNITS, worst_window(admitted, WINDOW)

    with quiet_logs():
        vloop.run(main())
