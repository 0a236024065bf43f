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
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import PROBE_TTL_SECS

from . import vloop
from . import world as world_module
from .fleet_checks import SLACK_SECS
from .relay_result import result_held_by_cut_follower
from .schedule import World, quiet_logs
from .test_scenarios import _until
from .world import Agent

#: Which way the result reaches cp0 first: the agent's own resend, or cp1's relay.
AGENT_FIRST, RELAY_FIRST = "agent first", "relay first"


async def _result_taken_while_cut(world: World, order: str) -> int:
    """cp0 leads, ``agent-0`` reaches only the follower cp1; ``svc-a`` (one probe closes
    it) trips and half-opens; cp1's link to cp0 is cut while agent-0 probes, then agent-0
    moves to cp0 and the link comes back, in ``order``; ``agent-1`` asks for a permit for
    two probe TTLs after. Returns how many probe successes cp0 counted."""
    short = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)
    scene = await result_held_by_cut_follower(world, short)
    leader, relay, prober = scene.leader, scene.relay, scene.prober

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
    return scene.successes


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
