"""A breaker write etcd stored but answered too late is the leader's own, on a real etcd.

The leader writes a transition; etcd applies it but the answer comes after the store's
bound, so the writer tries again (expecting the revision it held before) and loses the
compare-and-swap to its own write. Meanwhile the leader moved on (a failed probe's OPEN, the
next HALF_OPEN): that state stays, is written on top, and its probes go out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore, Guard, StoreUnavailable, Write
from mission_control.server.unanswered import UnansweredWrites
from mission_control.server.writes import StateWriter

SERVICE = "dep"
POLICY = default_policy(SERVICE, failure_threshold=2, success_threshold=3, wait_duration_secs=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LateAnswers:
    """The real store, except that while ``late`` is set a write is applied by etcd and its
    answer is then lost (it comes after the deadline): the caller sees StoreUnavailable."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.late = False
        self.landed: list[int] = []
        self.release = asyncio.Event()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)

    async def commit(self, writes: Sequence[Write], guards: Sequence[Guard] = (), *, timeout=None):  # type: ignore[no-untyped-def]
        result = await self.store.commit(writes, guards, timeout=timeout)
        if not self.late:
            return result
        self.late = False
        self.landed.append(result.revision if result.succeeded else 0)
        await self.release.wait()  # the answer is on its way while the leader decides on
        raise StoreUnavailable("etcd: deadline exceeded (the write may have happened)")


@pytest.fixture
async def parts(
    etcd_server: EtcdProcess, prefix: str
) -> AsyncIterator[tuple[StateWriter, LateAnswers, Clock]]:
    store = LateAnswers(await EtcdStore([etcd_server.endpoint]).connect())
    clock = Clock()
    breakers = FleetBreakers(lambda _: POLICY, clock=clock, wall=lambda: 1.7e9 + clock.now)
    breakers.lead_check = lambda: True  # this replica leads (and grants)
    writer = StateWriter(store, lambda name: f"{prefix}/breakers/{name}", breakers, PolicyBook(prefix))  # type: ignore[arg-type]
    breakers.change_listeners.append(
        lambda breaker, old, move: writer.decided(breaker.name) if move else None
    )
    task = asyncio.create_task(writer.run())
    yield writer, store, clock
    task.cancel()
    await store.store.close()


def _summary(generation: int = 0, **counts: int) -> pb.OutcomeSummary:
    return pb.OutcomeSummary(service=SERVICE, probe_generation=generation, **counts)


def _half_open(breakers: FleetBreakers, clock: Clock) -> None:
    while breakers.get(SERVICE).state is not BreakerState.HALF_OPEN:
        clock.now += 0.1
        breakers.tick()


async def test_a_write_stored_whose_answer_was_lost_is_taken_as_this_replicas_own(
    parts: tuple[StateWriter, LateAnswers, Clock], prefix: str
) -> None:
    writer, store, clock = parts
    breakers = writer.breakers
    breakers.record("x", _summary(failures=2, trailing_failures=2))  # OPEN, gen 1
    assert await writer.flush(10.0)
    store.late = True
    _half_open(breakers, clock)  # HALF_OPEN gen 2: etcd applies it, its answer is lost
    for _ in range(500):
        if store.landed:
            break
        await asyncio.sleep(0.01)
    assert store.landed and store.landed[0] > 0, "etcd applied the HALF_OPEN"
    assert breakers.request_probe("a", SERVICE) is not None
    breakers.record("a", _summary(breakers.get(SERVICE).generation, probe_failures=1))  # OPEN gen 3
    _half_open(breakers, clock)  # HALF_OPEN gen 4, decided from memory
    decided = breakers.get(SERVICE).generation
    assert decided == 4
    store.release.set()  # the late answer: the try after it loses the CAS to that write

    assert await writer.flush(10.0)
    held = breakers.get(SERVICE)
    assert (held.state, held.generation) == (BreakerState.HALF_OPEN, decided), "not taken back to gen 2"
    entry = await store.store.get(f"{prefix}/breakers/{SERVICE}")
    assert entry is not None and entry.mod_revision > store.landed[0]
    stored = json_format.Parse(entry.value, pb.Breaker(), ignore_unknown_fields=True)
    assert (stored.state, stored.generation) == (pb.BREAKER_STATE_HALF_OPEN, decided)
    # the HALF_OPEN is this leader's own, with no permit out: an agent asking gets one now,
    # not after the probe TTL plus the timeout kept for permits granted elsewhere
    assert breakers.request_probe("b", SERVICE) is not None


async def test_a_conflict_with_another_writers_record_is_still_adopted(
    parts: tuple[StateWriter, LateAnswers, Clock], prefix: str
) -> None:
    """Only the records this replica sent count as its own: an operator's write is adopted."""
    writer, store, clock = parts
    breakers = writer.breakers
    breakers.record("x", _summary(failures=2, trailing_failures=2))  # OPEN, gen 1
    assert await writer.flush(10.0)
    other = breakers.draft(SERVICE)
    other.force(clock.now, BreakerState.FORCED_OPEN, "operator")
    key = f"{prefix}/breakers/{SERVICE}"
    put = await store.store.commit([Write(key, breakers.record_of(other), breakers.revisions[SERVICE])], [])
    assert put.succeeded
    _half_open(breakers, clock)  # decided here on the revision before the operator's
    assert await writer.flush(10.0)
    assert breakers.get(SERVICE).state is BreakerState.FORCED_OPEN
    assert breakers.revisions[SERVICE] == put.revision


def test_tries_again_of_the_same_state_keep_the_record_that_may_have_landed() -> None:
    """etcd away for long after the late answer: each try again of the state held is sent
    once more; the record that may have landed is still known when etcd answers."""
    sent = UnansweredWrites()
    sent.sent(SERVICE, b"half-open gen 2", 1)
    for _ in range(100):
        sent.sent(SERVICE, b"half-open gen 4", 1)
    assert sent.own(SERVICE, b"half-open gen 2") == (True, 1)
    assert sent.own(SERVICE, b"forced open (an operator's)") == (False, None)
    sent.answered(SERVICE)
    assert sent.own(SERVICE, b"half-open gen 2") == (False, None)
