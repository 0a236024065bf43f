"""The start the scripted relay-result schedules share: a probe result a follower took while
cut off from the leader (``test_relay_cut_result``, ``test_relay_killed_result``)."""

from __future__ import annotations

from dataclasses import dataclass

from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.policy import ServicePolicy
from mission_control.server.relay import LeaderRelay

from .schedule import SERVICES, World, _policy_json, policy
from .test_scenarios import _until
from .world import Agent, Replica


@dataclass
class ResultHeld:
    """Where the schedule stands once cp1 took agent-0's probe result while cut from cp0."""

    leader: Replica
    follower: Replica
    relay: LeaderRelay
    prober: Agent
    #: svc-a's probe successes cp0 counted so far (a list of one: kept up to date)
    counted: list[int]

    def breaker(self) -> CircuitBreaker:
        return self.leader.plane.breakers.get("svc-a")

    @property
    def successes(self) -> int:
        return self.counted[0]


async def result_held_by_cut_follower(world: World, svc_a: ServicePolicy) -> ResultHeld:
    """cp0 leads, ``agent-0`` reaches only the follower cp1; ``svc-a`` (under ``svc_a``; one
    probe closes it) trips and half-opens; cp1's link to cp0 is cut while agent-0 probes, and
    cp1 takes the result (cp0 has counted none)."""
    world.success_thresholds["svc-a"] = svc_a.success_threshold
    for service in SERVICES:
        chosen = svc_a if service == "svc-a" else policy(service, world.rng)
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
    counted = [0]
    record = leader.plane.breakers.record

    def counting(agent, summary, origin=""):  # type: ignore[no-untyped-def]
        moves = record(agent, summary, origin)
        if summary.service == "svc-a":
            counted[0] += summary.probe_successes
        return moves

    leader.plane.breakers.record = counting  # type: ignore[method-assign]
    scene = ResultHeld(leader, follower, relay, prober, counted)
    world.recorder.start()
    world.failing["svc-a"] = True
    await _until(world, lambda: scene.breaker().state is BreakerState.OPEN, "cp0 trips svc-a")
    world.failing["svc-a"] = False  # the probe succeeds
    await _until(world, lambda: scene.breaker().state is BreakerState.HALF_OPEN, "cp0 half-opens svc-a")
    await _until(world, lambda: world.probes.stats["probes"] > 0, "agent-0 probes")
    world.log("partition cp1 | cp0")
    world.partition("cp0", "cp1")
    await _until(world, lambda: not world.probes.running, "the probe ends")
    await _until(world, lambda: relay.permits.count("agent-0", "svc-a") == 0, "cp1 takes the result")
    assert scene.successes == 0
    return scene
