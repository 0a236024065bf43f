"""A scripted schedule for I3's liveness part: a permit a follower's relay keeps out for an
agent cut off while it held it fills the limit until its hold lapses, as the leader's own
kept permits do (``relay_permits``); the checker waits for that (seed 31598 at --active 40)."""

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


async def _permit_kept_for_a_cut_off_agent(world: World) -> tuple[str, str]:
    """cp0 leads, both agents are on the follower cp1; ``svc-a`` (one probe at a time)
    fails, trips and half-opens; the agent granted the permit is cut off from every replica
    as its probe starts, the other asks on through cp1 for two probe TTLs. Returns (the
    agent cut off, the other)."""
    world.success_thresholds["svc-a"] = 1
    short = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)
    for service in SERVICES:
        chosen = short if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    follower = await world.start_replica("cp1")
    await _until(world, lambda: follower.plane.sync.loaded.is_set(), "cp1 loaded")
    for name in ("agent-0", "agent-1"):
        world.partitions.add(frozenset((name, "cp0")))
        world.agents.append(Agent(world, name, ("svc-a",)))
    await _until(world, lambda: all(a.view.connected for a in world.agents), "agents connected")
    world.recorder.start()
    world.failing["svc-a"] = True
    breaker = lambda: leader.plane.breakers.get("svc-a")  # noqa: E731
    await _until(world, lambda: breaker().state is BreakerState.HALF_OPEN, "cp0 half-opens svc-a")
    await _until(world, lambda: world.probes.stats["probes"] > 0, "a probe starts")
    ((holder, _, _),) = world.probes.grants
    cut = next(a for a in world.agents if a.name == holder)
    other = next(a for a in world.agents if a is not cut)
    world.log(f"{holder} cut off from every replica")
    world.partitions |= {frozenset((holder, "cp0")), frozenset((holder, "cp1"))}
    cut.break_link()
    await _until(world, lambda: not world.probes.running, "the probe ends")
    await _until(world, lambda: (other.name, "svc-a") in world.probes.asking, f"{other.name} asks")
    await asyncio.sleep(2 * PROBE_TTL_SECS + SLACK_SECS)
    world.recorder.stop()
    return holder, other.name


def test_a_permit_kept_for_an_agent_cut_off_behind_a_follower_fills_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the checker took the limit for free once the cut-off agent's probe ended,
    and reported the other agent asking through cp1 without a permit; but no replica can
    know that probe ended: cp1 keeps its permit out until the hold (TTL + timeout) lapses."""
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 0.5)

    async def main() -> tuple[World, str, str]:
        world = World(0)
        holder, other = await _permit_kept_for_a_cut_off_agent(world)
        return world, holder, other

    with quiet_logs():
        world, holder, _ = vloop.run(main())
    assert {agent for agent, _, _ in world.probes.grants} == {holder}  # kept out: none for the other
    assert [v for v in world.result.violations if "I3:" in v] == []
