"""A scripted schedule for I1 while etcd is away (seed 60150): the leader's write of a
HALF_OPEN lands but its answer is lost as etcd goes away; the follower read that write, the
leader's watch showed it too, and the CLOSED the leader then decides from memory must reach
the follower's agents within a push."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.server.store import StoreUnavailable

from . import vloop
from . import world as world_module
from .checks import PUSH_SECS
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import Agent


async def _half_open_answer_lost(world: World) -> tuple[Agent, BreakerState]:
    """cp0 leads, agent-0 is on the follower cp1; ``svc-a`` (one probe at a time) fails and
    trips. cp0's write of its HALF_OPEN is applied but answered only after etcd went away
    (both replicas' watches delivered it first); the service recovers, the agent's probe
    closes the breaker on cp0 from memory. Returns the agent and what it holds a push and a
    half after that CLOSED."""
    world.success_thresholds["svc-a"] = 1
    short = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)
    for service in SERVICES:
        chosen = short if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    follower = await world.start_replica("cp1")
    await _until(world, lambda: follower.plane.sync.loaded.is_set(), "cp1 loaded")
    world.partitions.add(frozenset(("agent-0", "cp0")))
    agent = Agent(world, "agent-0", ("svc-a",))
    world.agents.append(agent)
    await _until(world, lambda: agent.view.connected, "agent connected")
    world.recorder.start()

    store = leader.store
    commit = store.commit
    key = "/mission-control/v1/breakers/svc-a"

    async def answer_lost(writes, guards=(), *, timeout=None):  # type: ignore[no-untyped-def]
        half_open = any(w.key == key and w.value and b"HALF_OPEN" in w.value for w in writes)
        result = await commit(writes, guards, timeout=timeout)
        if not half_open or world.etcd.unavailable:
            return result
        await asyncio.sleep(0.2)  # etcd is slow to answer: the watches deliver the write first
        world.log("etcd unavailable; cp0's HALF_OPEN write stored, its answer lost")
        world.store_trouble()
        world.etcd.set_unavailable(True)
        raise StoreUnavailable("etcd: deadline exceeded (the write may have happened)")

    store.commit = answer_lost  # type: ignore[method-assign]
    world.failing["svc-a"] = True
    breaker = lambda: leader.plane.breakers.get("svc-a")  # noqa: E731
    await _until(world, lambda: breaker().state is BreakerState.OPEN, "cp0 trips svc-a")
    world.failing["svc-a"] = False
    await _until(world, lambda: world.etcd.unavailable, "the HALF_OPEN written as etcd goes away")
    held = follower.plane.breakers.get("svc-a")
    assert held.state is BreakerState.HALF_OPEN, "cp1's watch read the HALF_OPEN"
    await _until(world, lambda: breaker().state is BreakerState.CLOSED, "the probe closes svc-a on cp0")
    await asyncio.sleep(PUSH_SECS * 1.5)
    state = agent.view.services["svc-a"]
    told = agent.view.fleet_in_force(state, world.now)
    world.recorder.stop()
    return agent, told.state if told is not None else BreakerState.CLOSED


def test_a_leader_whose_half_open_write_was_answered_late_tells_followers_the_closed_decided_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, cp0's watch echo of its own write was ignored while the write was pending,
    so cp0 held svc-a at the OPEN's revision, and its CLOSED (from memory) rested on a
    revision below the HALF_OPEN cp1 read: cp1 kept telling agent-0 HALF_OPEN."""
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 0.3)

    async def main() -> tuple[World, BreakerState]:
        world = World(0)
        _, told = await _half_open_answer_lost(world)
        return world, told

    with quiet_logs():
        world, told = vloop.run(main())
    assert told is BreakerState.CLOSED
    assert [v for v in world.result.violations if "I1:" in v] == []
