"""A scripted schedule for I3 and I5: a probe result a follower took while cut off from the
leader, and the follower then killed (it never passes the result on).

The agent probing under a permit relayed by cp1 ends its probe while cp1 cannot reach the
leader cp0 (the relay's stream at cp0 ended); cp1 takes the result and keeps it for the
leader, then is killed. The agent moves to cp0 and sends its batch again there: cp0 settles
the permit it held for cp1's relay with it and counts the result, so the HALF_OPEN closes
(one success closes it) within a probe TTL of the agent's resend. Before, cp0 counted the
batch but not its result (the permit was the relay's), and held the permit until its hold
lapsed — the TTL plus the policy's 30 s timeout — with svc-a HALF_OPEN all that while.

With cp1 back instead of killed (the link heals after the agent's resend counted the
result), cp1's copy counts for nothing: the result counts once (``test_relay_cut_result``
covers the other order)."""

from __future__ import annotations

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import PROBE_TTL_SECS

from . import vloop
from . import world as world_module
from .fleet_checks import SLACK_SECS
from .relay_result import result_held_by_cut_follower
from .schedule import World, quiet_logs
from .test_scenarios import _until

KILLED, BACK = "killed", "back"


async def _result_held_by_a_follower(world: World, fate: str) -> tuple[int, BreakerState]:
    """cp0 leads, ``agent-0`` reaches only the follower cp1; ``svc-a`` (one probe closes it,
    timeout 30 s) trips and half-opens; cp1's link to cp0 is cut while agent-0 probes, cp1
    takes the result, then is killed (or its link comes back later, ``fate``); agent-0
    moves to cp0. Returns the probe successes cp0 counted and svc-a's state on cp0 one
    probe TTL after cp0 acknowledged agent-0's resend (and cp1's copy, when back)."""
    short = ServicePolicy(
        service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0, timeout_secs=30.0
    )
    scene = await result_held_by_cut_follower(world, short)
    leader, follower, relay, prober, breaker = (
        scene.leader,
        scene.follower,
        scene.relay,
        scene.prober,
        scene.breaker,
    )
    if fate == KILLED:
        world.crash(follower)
    world.log("agent-0 moves to cp0")
    world.partitions.discard(frozenset(("agent-0", "cp0")))
    world.partitions.add(frozenset(("agent-0", "cp1")))
    prober.break_link()
    await _until(world, lambda: prober.replica is leader and not prober.unacked.resend(), "cp0 acks it")
    if fate == BACK:
        world.log("heal: partition cp1 | cp0")
        world.partitions.discard(frozenset(("cp0", "cp1")))
        await _until(world, lambda: relay.connected and not relay._unacked.resend(), "cp1 passes it on")
    acked = world.now
    await _until(world, lambda: breaker().state is not BreakerState.HALF_OPEN, "svc-a leaves HALF_OPEN", 60.0)
    waited = world.now - acked
    world.log(f"svc-a {breaker().state.name} {waited:.2f}s after the resend was taken")
    assert waited <= PROBE_TTL_SECS + SLACK_SECS, f"HALF_OPEN waited {waited:.1f}s for the follower"
    world.recorder.stop()
    return scene.successes, breaker().state


@pytest.mark.parametrize("fate", [KILLED, BACK])
def test_a_probe_result_held_by_a_killed_follower_counts_once_from_the_agent(
    fate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 0.5)

    async def main() -> tuple[World, tuple[int, BreakerState]]:
        world = World(0)
        return world, await _result_held_by_a_follower(world, fate)

    with quiet_logs():
        world, (successes, state) = vloop.run(main())
    assert successes == 1, world.result.events  # counted once
    assert state is BreakerState.CLOSED
    assert [v for v in world.result.violations if "I3:" in v] == []
