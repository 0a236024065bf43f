"""A scripted schedule for I3's liveness part: a breaker that starts over at generation 0
(etcd lost it while no replica held it) half-opens at a generation below the one an agent
counted its probes for before; the agent's probe under the new HALF_OPEN must be reported.

Seed 175 at ``--active 80``: agent-0 counted probes of svc-b for generation 6; svc-b was
then gone from the store and from every replica, the agent's new stream listed no svc-b,
and the breaker began again CLOSED (generation 0) and went OPEN (1), HALF_OPEN (2), ...
up to HALF_OPEN 4. The agent's tally only moved forward in generation: the result of its
probe under 4 was dropped as of a HALF_OPEN over, the leader never heard back and held the
fleet's one permit for its whole hold (35 s) while the agent asked (7.3 s without one).
Fixed in ``LocalView.set_breaker``: a generation in force below the one the tally counts
for is followed also when no state was held before it (``client/view.py``)."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import PROBE_TTL_SECS

from . import vloop
from . import world as world_module
from .fleet_checks import SLACK_SECS
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import Agent

SHORT = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)


def _policies(world: World) -> None:
    for service in SERVICES:
        chosen = SHORT if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))


async def _started_over(world: World) -> tuple[Agent, BreakerState]:
    """cp0 leads, agent-0 calls svc-a, which fails until the agent has counted a probe of
    generation 4 or more; cp0 is killed and etcd wiped, the policies put back and cp0
    started again: svc-a starts over. It fails again until it half-opens, then recovers.
    Returns the agent and the state svc-a ends in, two probe TTLs after that."""
    world.success_thresholds["svc-a"] = 1
    _policies(world)
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    agent = Agent(world, "agent-0", ("svc-a",))
    world.agents.append(agent)
    await _until(world, lambda: agent.view.connected, "agent-0 connected")
    world.failing["svc-a"] = True
    tally = lambda: agent.view.get("svc-a").tally  # noqa: E731
    await _until(world, lambda: tally().probe_generation >= 4, "a probe counted for generation 4", 30.0)
    counted = tally().probe_generation
    world.crash(leader)
    world.etcd.wipe()
    _policies(world)
    fresh = await world.start_replica("cp0")
    await _until(world, lambda: fresh.plane.leading, "the restarted cp0 leads")
    await _until(world, lambda: agent.replica is fresh and agent.view.connected, "agent-0 back")
    world.recorder.start()
    breaker = lambda: fresh.plane.breakers.find("svc-a")  # noqa: E731
    await _until(
        world, lambda: breaker() is not None and breaker().state is BreakerState.HALF_OPEN, "svc-a half-opens"
    )
    assert breaker().generation < counted  # the case: a HALF_OPEN below what was counted
    world.failing["svc-a"] = False
    await _until(world, lambda: world.probes.stats["probes"] > 0, "a probe starts")
    await asyncio.sleep(2 * PROBE_TTL_SECS + SLACK_SECS)
    world.recorder.stop()
    return agent, breaker().state


def test_a_probe_under_a_breaker_started_over_below_the_generation_counted_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the result was dropped: svc-a stayed HALF_OPEN with its one permit held for
    the agent, which asked for another without one (I3)."""
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 0.5)

    async def main() -> tuple[World, BreakerState]:
        world = World(0)
        _, state = await _started_over(world)
        return world, state

    with quiet_logs():
        world, state = vloop.run(main())
    assert [v for v in world.result.violations if "I3:" in v] == []
    assert state is BreakerState.CLOSED
