"""Scripted schedules for defects the random ones found: each fails without its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy

from . import checks, vloop
from . import world as world_module
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .world import Agent, Replica


async def _until(world: World, check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = world.now + within
    while not check():
        assert world.now < deadline, f"not within {within} virtual seconds: {what}"
        await asyncio.sleep(0.05)


async def _fleet(world: World):  # type: ignore[no-untyped-def]
    for service in SERVICES:
        world.etcd.put_raw(
            f"/mission-control/v1/policies/{service}", _policy_json(policy(service, world.rng))
        )
    first = await world.start_replica("cp0")
    await _until(world, lambda: first.plane.leading, "cp0 leads")
    second = await world.start_replica("cp1")
    await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
    return first, second


def test_a_follower_converges_to_etcd_after_a_wipe_restored_by_a_leader_that_holds_nothing() -> None:
    async def main() -> None:
        world = World(0)
        leader, follower = await _fleet(world)
        await leader.plane.set_breaker_state("svc-a", BreakerState.FORCED_OPEN, "operator")
        held = lambda: follower.plane.breakers.find("svc-a")  # noqa: E731
        await _until(world, lambda: held() is not None and held().state is BreakerState.FORCED_OPEN, "pushed")
        # etcd loses everything while the follower cannot see it; the leader is restarted
        # (holding nothing) and leads the empty store
        follower.store.cut = True
        world.etcd.wipe()
        world.crash(leader)
        fresh = await world.start_replica("cp0")
        await _until(world, lambda: fresh.plane.leading, "the restarted replica leads")
        follower.store.cut = False
        await _until(world, lambda: follower.plane.sync.wipes > 0, "the follower notices the wipe")
        await _until(
            world,
            lambda: not follower.plane.writer.restore_pending and held().state is BreakerState.CLOSED,
            "the follower holds what etcd holds",
        )
        await asyncio.sleep(3.0)
        checks._converged(world)
        checks._leadership(world)
        assert world.result.violations == []

    with quiet_logs():
        vloop.run(main())


def test_a_replica_cut_off_during_a_wipe_notices_it_once_the_store_has_grown_past_it() -> None:
    """The store is wiped while one replica cannot see it, and has written more since
    than that replica ever saw: no revision seen goes backwards, but a breaker's key
    now has a lower revision than the one held, which only a loss of data explains."""

    async def main() -> None:
        world = World(0)
        first, second = await _fleet(world)
        for _ in range(12):  # a high revision held for svc-a
            await first.plane.set_breaker_state("svc-a", BreakerState.FORCED_OPEN, "operator")
        held = lambda: first.plane.breakers.find("svc-a")  # noqa: E731
        await _until(world, lambda: second.plane.breakers.find("svc-a") is not None, "pushed")
        first.store.cut = True
        world.etcd.wipe(new_cluster=False)  # etcd restarted empty with its old configuration
        await _until(world, lambda: second.plane.leading, "the other replica leads the empty store")
        await _until(world, lambda: not second.plane.writer.restore_pending, "restored")
        # (an operator's write is refused unsent until the replica's health is back)
        await _until(world, lambda: second.plane.store_ok, "the other replica serves again")
        await second.plane.set_breaker_state("svc-a", BreakerState.CLOSED, "operator")
        for _ in range(40):  # the store grows past every revision the cut replica saw
            await second.plane.set_breaker_state("svc-b", BreakerState.CLOSED, "operator")
        assert world.etcd.revision > first.plane.sync.revision
        first.store.cut = False
        await _until(world, lambda: first.plane.sync.wipes > 0, "the cut replica notices the wipe")
        await _until(world, lambda: held() is not None and held().state is BreakerState.CLOSED, "converged")
        await asyncio.sleep(3.0)
        checks._converged(world)
        checks._leadership(world)
        assert world.result.violations == []

    with quiet_logs():
        vloop.run(main())


def test_a_replica_cut_off_during_a_wipe_notices_a_key_restored_at_its_old_revision() -> None:
    """Schedule 579: a wipe restored in the same order puts a breaker back at the very
    revision a replica cut off meanwhile holds it at, with another value. Neither the
    store's revision nor the key's went backwards; only the value held at that revision
    changed, which a store that kept its data never does."""

    async def main() -> None:
        world = World(0)
        leader, follower = await _fleet(world)
        await leader.plane.set_breaker_state("svc-a", BreakerState.FORCED_OPEN, "operator")
        held = lambda: follower.plane.breakers.find("svc-a")  # noqa: E731
        await _until(world, lambda: held() is not None and held().state is BreakerState.FORCED_OPEN, "pushed")
        at = follower.plane.breakers.revisions["svc-a"]
        assert at > 0
        follower.store.cut = True
        world.crash(leader)
        world.etcd.wipe(new_cluster=False)  # etcd restarted empty with its old configuration
        for service in SERVICES:
            world.etcd.put_raw(
                f"/mission-control/v1/policies/{service}", _policy_json(policy(service, world.rng))
            )
        while world.etcd.revision < at - 1:
            world.etcd.put_raw("/elsewhere/padding", b"x")
        closed = b'{"name": "svc-a", "state": "BREAKER_STATE_FORCED_CLOSED", "generation": 7}'
        world.etcd.put_raw("/mission-control/v1/breakers/svc-a", closed)
        assert world.etcd.read("/mission-control/v1/breakers/svc-a", 0).mod_revision == at  # type: ignore[union-attr]
        while world.etcd.revision <= follower.plane.sync.revision:
            world.etcd.put_raw("/elsewhere/padding", b"x")
        follower.store.cut = False
        await _until(world, lambda: follower.plane.sync.wipes > 0, "the cut replica notices the wipe")
        await _until(
            world, lambda: held() is not None and held().state is BreakerState.FORCED_CLOSED, "converged"
        )
        await asyncio.sleep(3.0)
        checks._converged(world)
        checks._leadership(world)
        assert world.result.violations == []

    with quiet_logs():
        vloop.run(main())


async def leader_cut_off_while_a_breaker_trips(world: World) -> tuple[Replica, Replica]:
    """The I3 gap's schedule: the leader cp0 is cut off from etcd just after renewing its
    lease, and ``svc-a`` (etcd: CLOSED; a 1-s wait, one probe at a time) starts failing at
    once. cp0 trips it from memory and half-opens it while its lease still holds, with
    agent-0 (on cp0) asking for a permit; cp1 leads once that lease is over, trips and
    half-opens the breaker itself for agent-1 (on cp1); probes run 6 s; cp0 is then
    killed. Returns (cp0, cp1)."""
    world.success_thresholds["svc-a"] = 1
    short = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)
    for service in SERVICES:
        chosen = short if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
    first = await world.start_replica("cp0")
    await _until(world, lambda: first.plane.leading, "cp0 leads")
    second = await world.start_replica("cp1")
    await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
    for name, other in (("agent-0", "cp1"), ("agent-1", "cp0")):
        world.partitions.add(frozenset((name, other)))
        world.agents.append(Agent(world, name, ("svc-a",)))
    await _until(world, lambda: all(a.view.connected for a in world.agents), "agents connected")
    world.recorder.start()
    leadership = first.plane.leadership
    assert leadership is not None
    renewed = leadership._valid_until
    await _until(world, lambda: leadership._valid_until != renewed, "cp0 renews its lease")
    world.log("cp0 cut from etcd; svc-a fails")
    world.cut_from_etcd.add("cp0")
    first.store.cut = True
    world.store_trouble("cp0")
    world.failing["svc-a"] = True
    cp0_breaker = lambda: first.plane.breakers.get("svc-a")  # noqa: E731
    await _until(world, lambda: cp0_breaker().state is BreakerState.HALF_OPEN, "cp0 half-opens svc-a")
    assert leadership.lease_valid()  # it may grant, as far as its lease goes
    await _until(world, lambda: second.plane.leading, "cp1 leads")
    cp1_breaker = lambda: second.plane.breakers.get("svc-a")  # noqa: E731
    await _until(world, lambda: cp1_breaker().state is BreakerState.HALF_OPEN, "cp1 half-opens svc-a")
    await _until(world, lambda: world.probes.stats["probes"] > 0, "a probe runs")
    await asyncio.sleep(1.0)
    world.crash(first)
    world.recorder.stop()
    return first, second


def test_a_leader_cut_off_from_etcd_grants_nothing_for_a_breaker_etcd_has_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, cp0 granted agent-0 a permit for its HALF_OPEN from memory and cp1, which
    loaded CLOSED, granted agent-1 one for its own HALF_OPEN of the same generation: two
    probes where one may run (``test_fleet_checks.py`` shows the checker catching it)."""
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 6.0)

    async def main() -> World:
        world = World(0)
        await leader_cut_off_while_a_breaker_trips(world)
        return world

    with quiet_logs():
        world = vloop.run(main())
    granted = {agent for agent, _, _ in world.probes.grants}
    assert granted == {"agent-1"}, world.probes.grants  # cp1's permit, none of cp0's
    assert [v for v in world.result.violations if "I3:" in v] == []
