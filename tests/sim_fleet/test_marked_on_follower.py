"""A scripted schedule for the I1 check: an agent of a follower that holds a breaker
CLOSED, told the leader's HALF_OPEN marked ``no_grants`` in the wait after its takeover.

Seed 59114 at ``--active 40`` (on the schedules of its time): after etcd outages and wipes
the leader held svc-a HALF_OPEN in the wait after its takeover that followed etcd's
return, marked so its agents could get no permit (``server/grant_pause.py``); garbage lay
over svc-a's record with nothing good left under it, and the follower cp1, restarted, held
svc-a CLOSED, so it told its agents the leader's state (``server/leader_states.py``), mark
included. Its agent had had the mark since an outage, held the HALF_OPEN the probe TTL plus
the timeout from the first marked push, then went by its own breaker: the rule of a lost
link the view and grant_pause.py describe, and no agent rejected calls for a CLOSED
breaker (DESIGN.md's I1). The check took the follower's own breaker for what it tells,
found no mark on it and reported "agent-0 holds svc-a CLOSED; its replica cp1.3 tells
HALF_OPEN". It now reads the state and the mark the replica tells."""

from __future__ import annotations

import asyncio

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb

from . import checks, vloop
from .schedule import World, quiet_logs
from .test_garbage_over_held import leader_and_follower
from .test_scenarios import _until
from .world import PREFIX, Agent

KEY = f"{PREFIX}/breakers/svc-a"
#: svc-a's timeout: the agent's hold and the leader's takeover wait are the probe TTL plus it.
TIMEOUT = 4.0


async def _marked_on_a_follower(world: World) -> list[str]:
    """cp0 leads, cp1 follows; agent-0 reaches only cp1. svc-a trips; etcd goes away and
    cp0 half-opens it from memory, marked. agent-0 is cut off; etcd returns, cp0 leads
    again and stores the HALF_OPEN; garbage goes over it and etcd compacts the good
    revision away; cp1 restarts and agent-0 reaches it again. What the I1 check says once
    agent-0's hold is over while the leader still waits."""
    first, second = await leader_and_follower(world, TIMEOUT)
    world.partitions.add(frozenset(("agent-0", "cp0")))
    agent = Agent(world, "agent-0", ("svc-a",))
    world.agents.append(agent)
    world.failing["svc-a"] = True
    held = lambda replica: replica.plane.breakers.find("svc-a")  # noqa: E731
    await _until(world, lambda: held(first) is not None and held(first).state is BreakerState.OPEN, "trips")
    term = first.plane.leadership.term
    world.etcd.set_unavailable(True)
    fleet = lambda: agent.view.services["svc-a"].fleet  # noqa: E731
    await _until(
        world,
        lambda: fleet() is not None and fleet().no_grants_since is not None,
        "agent-0 told svc-a marked",
    )
    world.failing["svc-a"] = False
    world.partitions.add(frozenset(("agent-0", "cp1")))
    second.store.cut = True
    await asyncio.sleep(5.0)
    world.etcd.set_unavailable(False)
    await _until(
        world, lambda: first.plane.leading and first.plane.leadership.term > term, "cp0 leads again", 20.0
    )
    second.store.cut = False
    stored = lambda: checks.stored_state(world, "svc-a")  # noqa: E731
    await _until(world, lambda: stored() is not None and stored()[0] is BreakerState.HALF_OPEN, "stored")
    world.etcd.put_raw(KEY, b"\xff garbage")
    world.etcd.compact(world.etcd.revision)
    world.crash(second)
    second = await world.start_replica("cp1")
    await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
    world.partitions.discard(frozenset(("agent-0", "cp1")))
    state = agent.view.services["svc-a"]
    await _until(
        world,
        lambda: (
            agent.replica is second
            and agent.view.connected
            and agent.view.fleet_in_force(state, world.now) is None
        ),
        "agent-0 on cp1, its hold over",
        30.0,
    )
    assert first.plane.breakers.grants_blocked("svc-a"), "the leader still waits"
    told = checks._told(second, "svc-a")
    assert told.state == pb.BREAKER_STATE_HALF_OPEN and told.no_grants, told
    own = held(second)
    assert own is None or own.state is BreakerState.CLOSED, "cp1 could read no record of svc-a"
    before = len(world.result.violations)
    checks._agents_agree(world)
    found = world.result.violations[before:]
    # the wait over, the leader grants; the probe closes svc-a, written over the garbage
    closed = lambda r: held(r) is not None and held(r).state is BreakerState.CLOSED  # noqa: E731
    await _until(
        world,
        lambda: (
            stored() is not None
            and stored()[0] is BreakerState.CLOSED
            and closed(first)
            and closed(second)
            and fleet() is not None
            and fleet().state is BreakerState.CLOSED
        ),
        "svc-a closed everywhere",
        20.0,
    )
    return found


def test_an_agent_of_a_follower_goes_by_its_own_breaker_under_the_leaders_mark() -> None:
    """Before, the check reported agent-0 holding svc-a CLOSED while cp1 told HALF_OPEN."""

    async def main() -> list[str]:
        world = World(0)
        try:
            return await _marked_on_a_follower(world)
        finally:
            for agent in world.agents:
                agent.die()

    with quiet_logs():
        found = vloop.run(main())
    assert found == []
