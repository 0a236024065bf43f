"""A scripted schedule for I3 and I5 (seed 7030 at --active 80): a probe result a follower
took while cut from the leader reaches the leader exactly once, whichever way it goes.

The agent probing under a permit relayed by cp1 ends its probe while cp1 cannot reach the
leader cp0; cp1 takes the result (the permit was relayed to that agent) and keeps it for the
leader. The agent then moves to cp0 and sends its batch again there. Before, cp0 cut the
result (the permit is held under cp1's relay, not under the agent) and counted the batch;
cp1's copy, once its link was back, was then a batch counted already: the result never
counted, the permit stayed held until its hold lapsed and an agent asking got none (I3)."""

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

#: Which way the result reaches cp0 first: the agent's own resend, or cp1's relay.
AGENT_FIRST, RELAY_FIRST = "agent first", "relay first"


async def _result_taken_while_cut(world: World, order: str) -> int:
    """cp0 leads, ``agent-0`` reaches only the follower cp1; ``svc-a`` (one probe closes
    it) trips and half-opens; cp1's link to cp0 is cut while agent-0 probes, then agent-0
    moves to cp0 and the link comes back, in ``order``; ``agent-1`` asks for a permit for
    two probe TTLs after. Returns how many probe successes cp0 counted."""
    world.success_thresholds["svc-a"] = 1
    short = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)
    for service in SERVICES:
        chosen = short if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    follower = await world.start_replica("cp1")
    await _until(world, lambda: follower.plane.sync.loaded.is_set(), "cp1 loaded")
    relay = follower.plane.relay
    assert relay is not None
    world.partitions.add(frozenset(("agent-0", "cp0")))
    prober = Agent(world, "agent-0", ("svc-a",))
    world.agents.append(prober)
    await _until(world, lambda: prober.view.connected and relay.connected, "agent-0 on cp1, relayed")
    successes = 0
    record = leader.plane.breakers.record

    def counted(agent, summary, origin=""):  # type: ignore[no-untyped-def]
        nonlocal successes
        moves = record(agent, summary, origin)
        if summary.service == "svc-a":
            successes += summary.probe_successes
        return moves

    leader.plane.breakers.record = counted  # type: ignore[method-assign]
    world.recorder.start()
    world.failing["svc-a"] = True
    breaker = lambda: leader.plane.breakers.get("svc-a")  # noqa: E731
    await _until(world, lambda: breaker().state is BreakerState.OPEN, "cp0 trips svc-a")
    world.failing["svc-a"] = False  # the probe succeeds
    await _until(world, lambda: breaker().state is BreakerState.HALF_OPEN, "cp0 half-opens svc-a")
    await _until(world, lambda: world.probes.stats["probes"] > 0, "agent-0 probes")
    world.log("partition cp1 | cp0")
    world.partition("cp0", "cp1")
    await _until(world, lambda: not world.probes.running, "the probe ends")
    await _until(world, lambda: relay.permits.count("agent-0", "svc-a") == 0, "cp1 takes the result")
    assert successes == 0

    async def agent_moves() -> None:
        world.log("agent-0 moves to cp0")
        world.partitions.discard(frozenset(("agent-0", "cp0")))
        world.partitions.add(frozenset(("agent-0", "cp1")))
        prober.break_link()
        await _until(world, lambda: prober.replica is leader and not prober.unacked.resend(), "cp0 acks it")

    async def link_back() -> None:
        world.log("heal: partition cp1 | cp0")
        world.partitions.discard(frozenset(("cp0", "cp1")))
        await _until(world, lambda: relay.connected and not relay._unacked.resend(), "cp1 passes it on")

    first, then = (agent_moves, link_back) if order == AGENT_FIRST else (link_back, agent_moves)
    await first()
    await then()
    world.partitions.add(frozenset(("agent-1", "cp0")))
    asker = Agent(world, "agent-1", ("svc-a",))
    world.agents.append(asker)
    await asyncio.sleep(2 * PROBE_TTL_SECS + SLACK_SECS)
    world.recorder.stop()
    return successes


@pytest.mark.parametrize("order", [AGENT_FIRST, RELAY_FIRST])
def test_a_probe_result_a_follower_took_while_cut_off_counts_once(
    order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 0.5)

    async def main() -> tuple[World, int]:
        world = World(0)
        return world, await _result_taken_while_cut(world, order)

    with quiet_logs():
        world, successes = vloop.run(main())
    assert successes == 1, world.result.events  # counted once, whichever way it came
    assert [v for v in world.result.violations if "I3:" in v] == []
