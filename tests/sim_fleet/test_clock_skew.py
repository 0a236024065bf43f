"""The fleet simulation with each process on a wall clock of its own (``clocks.py``): the
replicas' responses carry ``sent_at`` on their sender's clock and a grant's ``hold_until``
on its granter's, so the real clock-offset code (``client/clock_offset.py``, the relay's
shift, ``LocalView.grant``) is what reads every probe permit's hold.

A scripted fleet shows the offsets measured and both paths of a permit (straight from the
leader, relayed by a follower) usable with clocks 9 and 10 s apart, and unusable without the
estimate; seeded schedules with skews up to 10 s keep every invariant, and without the
estimate some of them break I3 (an agent asks on without a permit it can use)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.clock_offset import ClockOffset
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import PROBE_TTL_SECS

from . import vloop
from .schedule import SERVICES, Result, World, _policy_json, policy, quiet_logs, simulate
from .test_scenarios import _until
from .world import EPOCH, Agent

#: Skewed schedules run by ``make test`` (at 10 virtual seconds of faults each).
SKEWED_SCHEDULES = int(os.environ.get("MC_SIM_SKEWED_SCHEDULES", "30"))
SKEWED_FIRST_SEED = int(os.environ.get("MC_SIM_SKEWED_FIRST_SEED", "0"))
ACTIVE = 10.0
LEADER, FOLLOWER = -4.0, 6.0  # the follower's clock is 10 s ahead of the leader's
DIRECT, RELAYED = 5.0, -8.0  # agent-0 (on the leader) 9 s ahead of it; agent-1 14 s behind cp1


def _no_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ClockOffset, "estimate", lambda self: None)


def _skewed_fleet() -> tuple[World, Counter[str]]:
    """cp0 leads on a clock 4 s behind, cp1 follows 6 s ahead; agent-0 reaches only cp0,
    agent-1 only cp1; ``svc-a`` (two probes at a time, a 5 s call timeout: a permit's hold
    is 10 s) fails, trips and half-opens, then recovers; both agents ask on for three probe
    TTLs while it stays HALF_OPEN. Returns the world and the probes each agent began."""
    probed: Counter[str] = Counter()

    async def main() -> World:
        world = World(0, skewed=True)
        for name, offset in (("cp0", LEADER), ("cp1", FOLLOWER), ("agent-0", DIRECT), ("agent-1", RELAYED)):
            world.clocks.set(name, offset)
        world.success_thresholds["svc-a"] = 2
        short = ServicePolicy(
            service="svc-a",
            failure_threshold=3,
            success_threshold=2,
            wait_duration_secs=1.0,
            timeout_secs=5.0,
        )
        for service in SERVICES:
            chosen = short if service == "svc-a" else policy(service, world.rng, short_timeout=True)
            world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
        leader = await world.start_replica("cp0")
        await _until(world, lambda: leader.plane.leading, "cp0 leads")
        follower = await world.start_replica("cp1")
        await _until(world, lambda: follower.plane.sync.loaded.is_set(), "cp1 loaded")
        world.partitions |= {frozenset(("agent-0", "cp1")), frozenset(("agent-1", "cp0"))}
        world.agents += [Agent(world, name, ("svc-a",)) for name in ("agent-0", "agent-1")]
        await _until(world, lambda: all(a.view.connected for a in world.agents), "agents connected")
        started = world.probes.started

        def counted(agent, service, generation):  # type: ignore[no-untyped-def]
            probed[agent.name] += 1
            return started(agent, service, generation)

        world.probes.started = counted  # type: ignore[method-assign]
        world.recorder.start()
        world.failing["svc-a"] = True
        breaker = lambda: leader.plane.breakers.get("svc-a")  # noqa: E731
        await _until(world, lambda: breaker().state is BreakerState.OPEN, "cp0 trips svc-a")
        world.failing["svc-a"] = False
        await _until(world, lambda: breaker().state is BreakerState.HALF_OPEN, "cp0 half-opens svc-a")
        end = world.now + 3 * PROBE_TTL_SECS
        while world.now < end and breaker().state is BreakerState.HALF_OPEN:
            await asyncio.sleep(0.05)
        world.recorder.stop()
        return world

    with quiet_logs():
        world = vloop.run(main())
    return world, probed


def _offsets(world: World) -> dict[str, float]:
    """How far each measured offset is from the clocks' true one (seconds, at the end)."""
    agents = {a.name: a for a in world.agents}
    now = max(a.view.clock() for a in world.agents)
    true = {name: world.clocks.of(name).skew_at(now) for name in ("cp0", "cp1")}
    found = {}
    for agent, replica in (("agent-0", "cp0"), ("agent-1", "cp1")):
        estimate = agents[agent].offsets[replica].estimate()
        assert estimate is not None
        # receipt (monotonic: virtual time) less sent_at (its wall clock): -(EPOCH + skew) + delay
        found[f"{agent} of {replica}"] = estimate + EPOCH + true[replica]
    relay = world.replicas["cp1"].plane.relay
    assert relay is not None
    shift = relay._shift()
    assert shift is not None
    found["cp1 of cp0"] = (true["cp0"] - true["cp1"]) + shift
    return found


def test_permits_are_used_through_clocks_seconds_apart_straight_and_relayed() -> None:
    world, probed = _skewed_fleet()
    assert world.result.violations == []
    assert world.replicas["cp0"].plane.breakers.get("svc-a").state is BreakerState.CLOSED
    assert probed["agent-0"] and probed["agent-1"], probed  # each path's permit was used
    for what, error in _offsets(world).items():
        # within a message's delay (at most 30 ms), less the under 1 ms a stamp is rounded
        # up by (``serialize_once``: a sample smaller, a hold read early)
        assert -0.001 <= error <= 0.05, (what, error)


def test_without_the_offset_estimate_no_agent_can_use_a_permit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay then passes the leader's hold on unshifted: on its clock, 10 s ahead, the
    permit's TTL is spent; agent-0 reads the leader's hold 9 s early: less than half the
    call timeout left. The HALF_OPEN stays, and I3 sees both agents ask without a permit."""
    _no_estimate(monkeypatch)
    world, probed = _skewed_fleet()
    assert world.replicas["cp0"].plane.breakers.get("svc-a").state is BreakerState.HALF_OPEN
    assert not probed, probed
    asking = [v for v in world.result.violations if "I3:" in v and "without one" in v]
    assert {v.split()[2] for v in asking} == {"agent-0", "agent-1"}, world.result.violations


def _run(seed: int) -> Result:
    try:
        return simulate(seed, active_secs=ACTIVE, skewed=True)
    except vloop.TooManySteps as err:
        result = Result(seed, ACTIVE, skewed=True)
        result.violations.append(f"the schedule spins: {err}")
        return result


@pytest.mark.timeout(max(1800, SKEWED_SCHEDULES * 15))  # a backstop: each is bounded in loop steps
def test_schedules_with_skewed_clocks_keep_the_invariants() -> None:
    seeds = range(SKEWED_FIRST_SEED, SKEWED_FIRST_SEED + SKEWED_SCHEDULES)
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=vloop.FRESH_PROCESSES) as pool:
        results = list(pool.map(_run, seeds, chunksize=4))
    failed = [r.report() for r in results if [v for v in r.violations if "(known:" not in v]]
    assert not failed, f"{len(failed)} of {len(results)} skewed schedules broke an invariant:\n" + "\n".join(
        failed
    )
    assert sum(r.stats["probes"] for r in results) > 0
