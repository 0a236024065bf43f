"""A scripted schedule: an operator's reset is stored by etcd and answered late (etcd slow).
The watch shows the reset first, agents keep failing, and the leader decides OPEN on top of
it; etcd refuses that write for a while, so it is still waiting when the reset's answer
comes. The answer must not settle the OPEN decided since: it is written, over the reset,
and the replicas converge to etcd (I2); agents are not left rejecting calls for a breaker
etcd holds CLOSED (I1)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.server.store import Guard, StoreUnavailable, TxnResult, Write

from . import checks, vloop
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import Agent

KEY = "/mission-control/v1/breakers/svc-a"


async def _reset_answered_late(world: World) -> None:
    tight = ServicePolicy(
        service="svc-a", failure_threshold=3, success_threshold=2, wait_duration_secs=60.0, timeout_secs=30.0
    )
    for service in SERVICES:
        value = tight if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(value))
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    follower = await world.start_replica("cp1")
    await _until(world, lambda: follower.plane.sync.loaded.is_set(), "cp1 loaded")
    world.agents.extend(Agent(world, f"agent-{i}", ("svc-a",)) for i in range(3))
    await _until(world, lambda: all(a.view.connected for a in world.agents), "agents connected")
    breaker = lambda: leader.plane.breakers.get("svc-a")  # noqa: E731

    commit = leader.store.commit
    reset_sent = asyncio.Event()
    answer = asyncio.Event()
    answered = asyncio.Event()

    async def late(writes: Sequence[Write], guards: Sequence[Guard] = (), *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        if not any(w.key == KEY for w in writes):
            return await commit(writes, guards, timeout=timeout)
        if not reset_sent.is_set():  # the operator's reset: stored now, answered when told
            reset_sent.set()
            result: TxnResult = world.etcd.txn(writes, guards)
            await answer.wait()
            answered.set()
            return result
        if not answered.is_set():  # the leader's own write: etcd too slow for it meanwhile
            await asyncio.sleep(0.2)
            raise StoreUnavailable("etcd: deadline exceeded")
        return await commit(writes, guards, timeout=timeout)

    leader.store.commit = late  # type: ignore[method-assign]
    reset = asyncio.get_running_loop().create_task(
        leader.plane.set_breaker_state("svc-a", BreakerState.CLOSED, "operator")
    )
    await _until(
        world, lambda: leader.plane.breakers.revisions.get("svc-a", 0) > 0, "the watch shows the reset"
    )
    world.failing["svc-a"] = True
    await _until(
        world, lambda: breaker().state is BreakerState.OPEN, "the leader decides OPEN over the reset"
    )
    assert leader.plane.writer.is_pending("svc-a")
    world.failing["svc-a"] = False
    answer.set()
    await reset
    await _until(
        world,
        lambda: checks.stored_state(world, "svc-a") == (BreakerState.OPEN, breaker().generation),
        "the OPEN decided over the reset is stored",
    )
    await _until(
        world,
        lambda: follower.plane.breakers.get("svc-a").state is BreakerState.OPEN,
        "the follower holds what etcd holds",
    )
    checks._converged(world)
    assert world.result.violations == []
    for agent in world.agents:
        agent.die()


def test_an_operators_reset_answered_late_leaves_the_open_decided_over_it_to_be_written() -> None:
    with quiet_logs():
        vloop.run(_reset_answered_late(World(0)))
