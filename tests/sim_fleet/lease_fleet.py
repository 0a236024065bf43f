"""What the scripted fleet-lease schedules share (``test_lease_*.py``): one service whose
request limit the fleet shares by lease, a world with it stored and cp0 leading, agents
spending it from a driver, and the check of I4 on what they admitted."""

from __future__ import annotations

import asyncio

from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import FleetLimits, ServicePolicy

from .schedule import World, _policy_json
from .test_scenarios import _until
from .world import PREFIX, Agent, Replica

SERVICE, LIMIT, WINDOW, PERIOD = "shared", 200, 2.0, 0.5
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period
RATE = 60.0  # calls per second each agent tries: two want more than the fleet's limit


def fleet_policy() -> bytes:
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


async def drive(world: World, agents: list[Agent], admitted: list[float]) -> None:
    while True:
        await asyncio.sleep(1.0 / RATE)
        for agent in agents:
            if agent.alive and agent.spend(SERVICE):
                admitted.append(world.now)


def budgets(agents: list[Agent]) -> list[LeasedBudget | None]:
    return [a.view.get(SERVICE).leased.get(f"{SERVICE}.requests") for a in agents]


async def leading_world(history: int = 0) -> tuple[World, Replica]:
    """A world whose calls are the driver's, the policy stored (after ``history`` puts of
    other keys), and cp0 started and leading."""
    world = World(0)
    world.calling = False  # the calls here are the driver's
    for n in range(history):
        world.etcd.put_raw(f"{PREFIX}/history/{n}", b"x")
    world.etcd.put_raw(f"{PREFIX}/policies/{SERVICE}", fleet_policy())
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    return world, leader


async def loaded(world: World, *replicas: Replica) -> None:
    await _until(world, lambda: all(r.plane.sync.loaded.is_set() for r in replicas), "loaded")


async def spending(
    world: World, names: tuple[str, ...]
) -> tuple[list[Agent], list[float], asyncio.Task[None]]:
    """Agents ``names`` spending from the driver, each leased and the split settled on the
    demand. Returns them, the times of the calls admitted (growing) and the driver."""
    agents = [Agent(world, name, (SERVICE,)) for name in names]
    world.agents.extend(agents)
    admitted: list[float] = []
    driver = asyncio.get_running_loop().create_task(drive(world, agents, admitted))
    leased = lambda: all(b is not None and b.leased for b in budgets(agents))  # noqa: E731
    await _until(world, leased, "every agent leased")
    await asyncio.sleep(8 * PERIOD)  # the split settles on the demand
    return agents, admitted, driver
