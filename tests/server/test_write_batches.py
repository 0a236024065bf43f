"""A burst of breaker transitions is stored a batch per transaction (``StateWriter``'s
``PERSIST_BATCH``), not one transaction per breaker, and each breaker still ends ok,
conflict or fenced as alone: a lost compare-and-swap on one adopts the stored state of that
one, the others are stored; a lost fence keeps every one pending. Real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.app import RunningControlPlane
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore, Write
from mission_control.server.writes import PERSIST_BATCH, StateWriter

from .test_writes import Fence

COUNT = 45


def names(count: int = COUNT) -> list[str]:
    return [f"burst-{i:03d}" for i in range(count)]


def opened(breakers: FleetBreakers, name: str, failures: int = 5) -> None:
    breakers.record("a", pb.OutcomeSummary(service=name, failures=failures, trailing_failures=failures))
    assert breakers.get(name).state is BreakerState.OPEN


@pytest.fixture
async def writer(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[StateWriter]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    policies = PolicyBook(prefix)
    writer = StateWriter(
        store, lambda name: f"{prefix}/breakers/{name}", FleetBreakers(policies.policy_of), policies
    )
    writer.breakers.change_listeners.append(lambda message, _, move: move and writer.decided(message.name))
    yield writer
    await store.close()


async def stored_states(writer: StateWriter, prefix: str) -> dict[str, tuple[int, int, str]]:
    """name -> (state, mod_revision, reason) of every breaker stored."""
    entries, _ = await writer.store.get_prefix(f"{prefix}/breakers/")
    out = {}
    for entry in entries:
        record = json_format.Parse(entry.value, pb.Breaker(), ignore_unknown_fields=True)
        out[entry.key.rsplit("/", 1)[1]] = (record.state, entry.mod_revision, record.reason)
    return out


async def run_until(writer: StateWriter, done: object) -> None:
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(1000):
            if done():  # type: ignore[operator]
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the writer did not get there in 10 s")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_burst_is_stored_in_batches_with_each_breakers_own_audit_record(
    control_plane: RunningControlPlane,
) -> None:
    plane = control_plane.plane
    for i, name in enumerate(names()):
        opened(plane.breakers, name, 5 + i % 3)  # reasons differ with the count
    reasons = {name: plane.breakers.to_proto(name).reason for name in names()}
    assert len(set(reasons.values())) == 3
    assert await plane.flush(timeout=20)
    stored = {n: r for n, r in plane.breakers.revisions.items() if n.startswith("burst-")}
    assert len(stored) == COUNT and all(stored.values())
    transactions = len(set(stored.values()))
    assert transactions < COUNT  # one per batch (and per turn of the writer it took)
    print(f"{COUNT} transitions stored in {transactions} transactions (batches of {PERSIST_BATCH})")
    for name in names():
        records = await plane.audit.of("breaker", name, 5)
        assert [(r.action, r.reason) for r in records] == [("breaker.transition", reasons[name])]


async def test_a_lost_compare_and_swap_in_a_batch_adopts_that_breakers_stored_state_only(
    writer: StateWriter, prefix: str
) -> None:
    for name in names():
        opened(writer.breakers, name)
    other = names()[7]  # meanwhile another replica stored this one
    elsewhere = FleetBreakers(writer.policies.policy_of)
    elsewhere.force(other, BreakerState.FORCED_OPEN, "held elsewhere")
    await writer.store.commit([Write(f"{prefix}/breakers/{other}", elsewhere.to_record(other), None)])
    await run_until(writer, lambda: not writer.pending)
    stored = await stored_states(writer, prefix)
    assert stored[other][0] == pb.BREAKER_STATE_FORCED_OPEN
    assert writer.breakers.get(other).state is BreakerState.FORCED_OPEN  # conflict: adopted
    rest = {n: s for n, s in stored.items() if n != other}
    assert len(rest) == COUNT - 1 and all(s[0] == pb.BREAKER_STATE_OPEN for s in rest.values())  # ok
    assert all(writer.breakers.get(n).state is BreakerState.OPEN for n in rest)


async def test_a_lost_fence_keeps_every_breaker_of_a_batch_pending(writer: StateWriter, prefix: str) -> None:
    fence = Fence(f"{prefix}/leader", 12345)  # a fence that no longer holds
    writer.fence = fence
    for name in names():
        opened(writer.breakers, name)
    await run_until(writer, lambda: fence.deposed)
    assert writer.pending == frozenset(names())  # fenced: kept, nothing adopted
    assert await stored_states(writer, prefix) == {}
    assert all(writer.breakers.get(n).state is BreakerState.OPEN for n in names())
