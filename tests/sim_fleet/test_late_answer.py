"""A scripted schedule: the leader's breaker write is stored by etcd but answered after the
store's bound (etcd slow), twice; the try after that loses the compare-and-swap to the
leader's own write. Probes are short in the first HALF_OPENs, then 10 s long."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import FleetBreakers
from mission_control.server.store import Guard, StoreUnavailable, Write
from mission_control.server.unanswered import UnansweredWrites

from . import vloop
from . import world as world_module
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import Agent

#: svc-a's probe limit once a probe succeeded, and what the checker holds the fleet to.
THRESHOLD = 3


async def _late_answers(world: World) -> int:
    """Runs the schedule; returns the most probes of svc-a in flight at once (any generation)."""
    world.success_thresholds["svc-a"] = THRESHOLD
    tight = ServicePolicy(
        service="svc-a",
        failure_threshold=3,
        success_threshold=THRESHOLD,
        wait_duration_secs=1.0,
        timeout_secs=30.0,
    )
    for service in SERVICES:
        value = tight if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(value))
    leader = await world.start_replica("cp0")
    await _until(world, lambda: leader.plane.leading, "cp0 leads")
    world.agents.extend(Agent(world, f"agent-{i}", ("svc-a",)) for i in range(5))
    await _until(world, lambda: all(a.view.connected for a in world.agents), "agents connected")
    world.recorder.start()
    breaker = lambda: leader.plane.breakers.get("svc-a")  # noqa: E731
    world.failing["svc-a"] = True
    stored = lambda: breaker().state is BreakerState.HALF_OPEN and not leader.plane.writer.pending  # noqa: E731
    await _until(world, stored, "HALF_OPEN stored")
    late = [2]
    commit = leader.store.commit

    async def slow(writes: Sequence[Write], guards: Sequence[Guard] = (), *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        if late[0] and any(w.key.endswith("/breakers/svc-a") for w in writes):
            late[0] -= 1
            world.etcd.txn(writes, guards)  # applied (or not: a lost compare-and-swap) ...
            await asyncio.sleep(2.2)  # ... and answered after the deadline
            raise StoreUnavailable("etcd: deadline exceeded (the write may have happened)")
        return await commit(writes, guards, timeout=timeout)

    leader.store.commit = slow  # type: ignore[method-assign]
    await _until(world, lambda: breaker().state is BreakerState.OPEN, "the probe fails")
    world.failing["svc-a"] = False
    most = 0
    end = world.now + 25.0
    while world.now < end:
        most = max(most, sum(1 for p in world.probes.running.values() if p.service == "svc-a"))
        await asyncio.sleep(0.05)
    world.recorder.stop()
    for agent in world.agents:
        agent.die()
    return most


def _run() -> tuple[int, list[str]]:
    async def main() -> tuple[int, World]:
        world = World(0)
        return await _late_answers(world), world

    with quiet_logs():
        most, world = vloop.run(main())
    return most, [v for v in world.result.violations if "I3:" in v]


@pytest.fixture(autouse=True)
def probe_lengths(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    lengths = iter([0.3, 0.3, 10, 10, 10, 0.3] + [10.0] * 100)
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: next(lengths))
    yield


def test_a_leaders_write_answered_late_keeps_its_probes_within_the_threshold() -> None:
    most, violations = _run()
    assert not violations
    assert most <= THRESHOLD


def test_i3_counts_the_probes_of_a_replaced_half_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect put back (its own write adopted as made elsewhere, the permits out in the
    HALF_OPEN it replaced forgotten): 6 probes in flight, 3 of each of two generations;
    a count per generation saw at most 3 of any one."""
    monkeypatch.setattr(UnansweredWrites, "own", lambda self, name, stored: (False, None))
    adopt = FleetBreakers.adopt

    def forgetting(self: FleetBreakers, name: str, value: bytes | None, revision: int) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(CircuitBreaker, "set_aside_permits", CircuitBreaker.clear_permits)
            adopt(self, name, value, revision)

    monkeypatch.setattr(FleetBreakers, "adopt", forgetting)
    most, violations = _run()
    assert most > THRESHOLD
    assert [v for v in violations if "in flight" in v and "of other generations" in v], violations
