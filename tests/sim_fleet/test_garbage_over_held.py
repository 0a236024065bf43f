"""A scripted schedule for I2 (and I3's liveness part): a leader that holds a breaker over a
stored record that does not parse, with nothing good under it, writes what it holds over it.

Seed 21 at ``--active 80`` (on the schedules of its time): etcd was wiped while cp1 was cut
off from it; the leader restored svc-c (HALF_OPEN) and svc-b, and garbage was then put under
both, over revisions compaction had taken. cp1, back, found the store had lost its data and
kept what it held in memory (nothing good could be read back), handed the restore over
and later led: it held svc-c HALF_OPEN at no stored revision, so it granted no probe (the
store was not known to hold the run) and no transition ever came to write over the
garbage; the restarted follower held nothing of svc-c, and its agent went by its own
breaker while it was told HALF_OPEN (I1). Fixed: a leader writes what it holds over such a
record when it takes over, and after a load or a watch event that refused one
(``StateWriter.overwrite_refused``)."""

from __future__ import annotations

import asyncio
from typing import Any

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import PROBE_TTL_SECS

from . import checks, vloop
from .fleet_checks import SLACK_SECS
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import PREFIX, Agent

KEY = f"{PREFIX}/breakers/svc-a"
#: svc-a's timeout: a new leader waits the probe TTL plus it before granting for a HALF_OPEN
#: from before its takeover.
TIMEOUT = 2.0


async def leader_and_follower(world: World, timeout: float) -> tuple[Any, Any]:
    """cp0 leading and cp1 following, svc-a quick to trip (3 failures), one probe to close
    and ``timeout`` for its calls; the other services under drawn policies."""
    world.success_thresholds["svc-a"] = 1
    short = ServicePolicy(
        service="svc-a",
        failure_threshold=3,
        success_threshold=1,
        wait_duration_secs=1.0,
        timeout_secs=timeout,
    )
    for service in SERVICES:
        chosen = short if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"{PREFIX}/policies/{service}", _policy_json(chosen))
    first = await world.start_replica("cp0")
    await _until(world, lambda: first.plane.leading, "cp0 leads")
    second = await world.start_replica("cp1")
    await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
    return first, second


async def _garbage_over_a_half_open(world: World) -> None:
    """cp0 leads, cp1 follows; svc-a trips and half-opens with no agent left to probe it.
    cp1 is cut from etcd, etcd is wiped and cp0 restores svc-a; garbage goes over it and
    etcd compacts the restored revision away. cp0 is killed; cp1, back, leads; cp0 starts
    again. svc-a is healthy again and a new agent calls it."""
    first, second = await leader_and_follower(world, TIMEOUT)
    caller = Agent(world, "agent-0", ("svc-a",))
    world.agents.append(caller)
    world.failing["svc-a"] = True
    held = lambda replica: replica.plane.breakers.find("svc-a")  # noqa: E731
    await _until(world, lambda: held(first) is not None and held(first).state is BreakerState.OPEN, "trips")
    caller.die()
    half_open = lambda r: held(r) is not None and held(r).state is BreakerState.HALF_OPEN  # noqa: E731
    await _until(world, lambda: half_open(second), "cp1 holds the stored HALF_OPEN")
    second.store.cut = True
    world.etcd.wipe()
    await _until(
        world, lambda: first.plane.sync.wipes > 0 and not first.plane.writer.restore_pending, "restored"
    )
    await _until(world, lambda: KEY in world.etcd.keys, "svc-a restored")
    world.etcd.put_raw(KEY, b"{garbage")
    world.etcd.compact(world.etcd.revision)
    await asyncio.sleep(1.0)
    world.crash(first)
    second.store.cut = False
    await _until(world, lambda: second.plane.leading, "cp1 leads", 20.0)
    await world.start_replica("cp0")
    world.failing["svc-a"] = False
    world.recorder.start()
    world.agents.append(Agent(world, "agent-1", ("svc-a",)))
    await asyncio.sleep(PROBE_TTL_SECS + TIMEOUT + 2 * PROBE_TTL_SECS + SLACK_SECS)
    world.recorder.stop()


def test_a_leader_writes_a_breaker_it_holds_over_a_stored_record_that_does_not_parse() -> None:
    """Before, svc-a stayed HALF_OPEN over the garbage to the end: no permit went out
    (agent-1 asked without one, I3), nothing was written, and the restarted cp0 held
    nothing of it (I2)."""

    async def main() -> World:
        world = World(0)
        await _garbage_over_a_half_open(world)
        return world

    with quiet_logs():
        world = vloop.run(main())
    assert [v for v in world.result.violations if "I3:" in v] == []
    stored = checks.stored_state(world, "svc-a")
    assert stored is not None and stored[0] is BreakerState.CLOSED, world.etcd.keys.get(KEY)
    for replica in world.alive_replicas():
        found = replica.plane.breakers.find("svc-a")
        assert found is not None and found.state is BreakerState.CLOSED, replica.instance
