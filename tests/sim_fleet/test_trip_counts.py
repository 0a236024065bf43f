"""The I5 check through the store (``trip_counts.py``), on a scripted schedule: a leader
decides a breaker CLOSED from memory while etcd is away and counts an agent's batches whose
acknowledgements are lost; etcd returns, the CLOSED is stored, the leader dies, and the
agent sends the batches again to the next leader, which loaded the record — another
replica, or the same one restarted at once, within its lease."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.outcome_ledger import BatchKey
from mission_control.server.writes import StateWriter

from . import vloop
from .names import key_name
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .trip_counts import CARRIED
from .world import Replica

SVC, AGENT, UNACKED = "svc-a", "agent-x", 4


def _batches(world: World) -> list[BatchKey]:
    keys = [BatchKey(AGENT, AGENT, AGENT, sequence) for sequence in range(1, UNACKED + 1)]
    for key in keys:
        world.batches[key_name(key)] = 1
    return keys


def _count(replica: Replica, keys: list[BatchKey]) -> None:
    for key in keys:
        failed = pb.OutcomeSummary(service=SVC, failures=1, trailing_failures=1)
        if replica.plane.ledger.first_time(key):
            replica.plane.count_batch(key, AGENT, [failed])


def _scripted(restarted: bool) -> World:
    async def main() -> World:
        world = World(0)
        five = ServicePolicy(service=SVC, failure_threshold=5, success_threshold=1, wait_duration_secs=1.0)
        for service in SERVICES:
            chosen = five if service == SVC else policy(service, world.rng)
            world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
        first = await world.start_replica("cp0")
        await _until(world, lambda: first.plane.leading, "cp0 leads")
        second = await world.start_replica("cp1")
        await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
        keys = _batches(world)
        world.etcd.set_unavailable(True)
        first.plane.breakers.force(SVC, BreakerState.CLOSED, "closed from memory")
        assert first.plane.writer.is_pending(SVC)
        _count(first, keys)  # counted; their acknowledgements lost
        await asyncio.sleep(1.0)  # the write is tried again meanwhile
        world.etcd.set_unavailable(False)
        await _until(world, lambda: not first.plane.writer.is_pending(SVC), "cp0 stores the CLOSED")
        world.crash(first)
        if restarted:
            world.crash(second)
            second = await world.start_replica("cp0")  # at once, its lease still held
        await _until(world, lambda: second.plane.leading, f"{second.instance} leads")
        _count(second, keys)  # sent again by the agent
        return world

    with quiet_logs():
        return vloop.run(main())


@pytest.mark.parametrize("restarted", [False, True], ids=["successor", "restarted"])
def test_a_record_carries_no_count_a_successor_counts_again(restarted: bool) -> None:
    world = _scripted(restarted)
    assert [v for v in world.result.violations if "I5" in v] == []
    leader = next(r for r in world.alive_replicas() if r.plane.leading)
    breaker = leader.plane.breakers.get(SVC)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == UNACKED


@pytest.mark.parametrize("restarted", [False, True], ids=["successor", "restarted"])
def test_the_check_catches_counts_carried_through_a_record(
    monkeypatch: pytest.MonkeyPatch, restarted: bool
) -> None:
    """Before: the record was taken when each write was sent, and its counts were loaded."""
    from mission_control.server import engine

    monkeypatch.setattr(engine, "taken_counts", lambda r: (r.consecutive_failures, r.half_open_successes))
    persist = StateWriter._persist

    async def taken_when_sent(self: StateWriter, name: str) -> None:
        if self.is_pending(name):
            b = self.breakers
            self._decided[name] = (b.to_record(name), b.run_of(name), b.to_proto(name).reason)
        await persist(self, name)

    monkeypatch.setattr(StateWriter, "_persist", taken_when_sent)
    world = _scripted(restarted)
    carried = [v for v in world.result.violations if CARRIED in v]
    assert carried, world.result.violations
    successor = "cp0.2" if restarted else "cp1.1"
    assert f"{successor} counts 2 failures of batch" in carried[0], carried
