"""What an engine takes from a stored breaker record, and what a record says: the state as
decided, never a count toward the next transition (``server/stored_counts.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore
from mission_control.server.stored_counts import taken_counts
from mission_control.server.writes import StateWriter

SVC = "svc"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def engine(clock: Clock | None = None) -> FleetBreakers:
    policy = ServicePolicy(service=SVC, failure_threshold=5, success_threshold=2, wait_duration_secs=10)
    clock = clock or Clock()
    return FleetBreakers(lambda _: policy, clock=clock, wall=lambda: 1_800_000_000.0 + clock())


def failed(count: int) -> pb.OutcomeSummary:
    return pb.OutcomeSummary(service=SVC, failures=count, trailing_failures=count)


def record(state: int, **counts: int) -> pb.Breaker:
    return pb.Breaker(name=SVC, state=state, generation=3, **counts)


def stored(message: pb.Breaker) -> bytes:
    return json_format.MessageToJson(message, preserving_proto_field_name=True).encode()


def test_no_count_toward_the_next_transition_is_taken_from_a_record() -> None:
    closed = record(pb.BREAKER_STATE_CLOSED, consecutive_failures=4, failures=2)
    assert taken_counts(closed) == (0, 0)
    half_open = record(pb.BREAKER_STATE_HALF_OPEN, consecutive_failures=5, half_open_successes=1)
    assert taken_counts(half_open) == (5, 0)  # the failures that opened the OPEN before: shown
    opened = record(pb.BREAKER_STATE_OPEN, consecutive_failures=5, failures=5)
    assert taken_counts(opened) == (5, 0)


def test_a_closed_record_with_counts_opens_nothing_below_the_threshold() -> None:
    """A record written after its writer counted failures (an earlier release wrote the
    counts of when a write was sent, or a hand-written one): the failures behind them may
    come again, as batches whose acknowledgement was lost."""
    breakers = engine()
    breakers.adopt(SVC, stored(record(pb.BREAKER_STATE_CLOSED, consecutive_failures=4)), revision=7)
    breaker = breakers.get(SVC)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0
    assert breakers.to_proto(SVC).consecutive_failures == 0  # shown as counted here
    assert breakers.record("a", failed(4)) == []  # the same four, sent again: still CLOSED
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 4
    moves = breakers.record("a", failed(1))  # a fifth failure opens it
    assert [m.new for m in moves] == [BreakerState.OPEN]


def test_an_open_record_keeps_what_opened_it_and_a_half_open_counts_its_own_probes() -> None:
    clock = Clock()
    breakers = engine(clock)
    opened = record(pb.BREAKER_STATE_OPEN, consecutive_failures=6, failures=6)
    opened.opened_at.FromSeconds(int(1_800_000_000 + clock()))
    opened.open_remaining.FromSeconds(10)
    breakers.adopt(SVC, stored(opened), revision=7)
    shown = breakers.to_proto(SVC)
    assert shown.state == pb.BREAKER_STATE_OPEN and shown.failures == shown.consecutive_failures == 6
    half_open = record(pb.BREAKER_STATE_HALF_OPEN, half_open_successes=1, failures=6)
    half_open.generation = 4
    breakers.adopt(SVC, stored(half_open), revision=8)
    breaker = breakers.get(SVC)
    assert breaker.half_open_successes == 0 and breaker.failures == 6
    assert breaker.probe_limit() == 1  # none of its probes has succeeded here yet


@pytest.fixture
async def writer(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[StateWriter]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    policies = PolicyBook(prefix)
    writer = StateWriter(store, lambda name: f"{prefix}/breakers/{name}", engine(), policies)
    writer.breakers.change_listeners.append(lambda message, _, move: move and writer.decided(message.name))
    yield writer
    await store.close()


async def test_a_transition_is_stored_as_decided_not_with_the_failures_counted_since(
    writer: StateWriter, prefix: str
) -> None:
    """etcd away when a breaker closed: the write goes later, and the record it sends is
    the state decided, not one with the failures counted while it waited."""
    breakers = writer.breakers
    breakers.force(SVC, BreakerState.FORCED_OPEN)
    breakers.force(SVC, BreakerState.CLOSED, "reset")  # decided; not stored yet
    assert writer.is_pending(SVC)
    assert breakers.record("a", failed(4)) == []  # counted while the write waits
    await writer._persist(SVC)
    assert not writer.is_pending(SVC)
    entry = await writer.store.get(f"{prefix}/breakers/{SVC}")
    assert entry is not None
    held = json_format.Parse(entry.value, pb.Breaker(), ignore_unknown_fields=True)
    assert held.state == pb.BREAKER_STATE_CLOSED and held.reason == "reset"
    assert held.consecutive_failures == 0  # the four are this engine's own
    assert breakers.get(SVC).consecutive_failures == 4
    successor = engine()
    successor.adopt(SVC, entry.value, entry.mod_revision)
    assert successor.get(SVC).consecutive_failures == 0
