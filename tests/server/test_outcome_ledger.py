"""The leader's ledger of counted outcome batches: each batch once, in bounded memory."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.outcome_ledger import BatchKey, OutcomeLedger, batch_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_counts_once_in_any_order_within_the_window() -> None:
    ledger = OutcomeLedger(window=8)
    order = [1, 2, 5, 3, 2, 5, 4, 1, 9, 6]
    counted = [s for s in order if ledger.first_time(BatchKey("a", "s", "x", s))]
    assert counted == [1, 2, 5, 3, 4, 9, 6]
    assert ledger.resent == 3


def test_a_batch_too_far_behind_its_session_is_not_counted() -> None:
    ledger = OutcomeLedger(window=8)
    assert ledger.first_time(BatchKey("a", "s", "x", 20))
    assert not ledger.first_time(BatchKey("a", "s", "x", 12))  # 8 behind: cannot be told from a resend
    assert ledger.first_time(BatchKey("a", "s", "x", 13))
    assert ledger.too_old == 1


def test_a_hostile_jump_in_sequence_costs_bounded_work() -> None:
    ledger = OutcomeLedger(window=8)
    assert ledger.first_time(BatchKey("a", "s", "x", 1))
    assert ledger.first_time(BatchKey("a", "s", "x", 2**62))  # without a bound: a 2**62-bit integer
    assert not ledger.first_time(BatchKey("a", "s", "x", 2**62))
    assert ledger.first_time(BatchKey("a", "s", "x", 2**62 - 3))
    assert not ledger.first_time(BatchKey("a", "s", "x", 1))  # far behind now
    assert all(s.seen.bit_length() <= 8 for s in ledger._sessions.values())


def test_sessions_and_agents_are_apart_and_unnumbered_batches_always_count() -> None:
    ledger = OutcomeLedger()
    assert ledger.first_time(BatchKey("a", "s1", "x", 1))
    assert ledger.first_time(BatchKey("a", "s2", "x", 1))  # the agent restarted: a new session
    assert ledger.first_time(BatchKey("b", "s1", "x", 1))
    assert ledger.first_time(BatchKey("a", "s1", "x", 0)) and ledger.first_time(BatchKey("a", "s1", "x", 0))


def test_memory_is_bounded_by_sessions_and_idle_ones_are_forgotten() -> None:
    clock = Clock()
    ledger = OutcomeLedger(max_sessions=100, idle_secs=60.0, clock=clock)
    for i in range(1000):
        ledger.first_time(BatchKey(f"agent-{i}", "s", "x", 1))
    assert len(ledger) == 100
    clock.now = 61.0
    ledger.first_time(BatchKey("late", "s", "x", 1))
    assert len(ledger) == 1
    assert ledger.first_time(BatchKey("agent-999", "s", "x", 1))  # forgotten: counted again


def test_a_restarted_process_numbers_a_new_series() -> None:
    ledger = OutcomeLedger()
    assert ledger.first_time(BatchKey("a", "s", "run-1", 1))
    assert ledger.first_time(BatchKey("a", "s", "run-2", 1))  # same agent and session, new process


def test_only_a_replica_may_name_another_senders_batch() -> None:
    origin = pb.OutcomeOrigin(agent_id="victim", session_id="v", series="vs", sequence=9)
    batch = pb.OutcomeBatch(sequence=4, origin=origin)
    assert batch_key("replica.r1", "x", "rs", batch, replica=True) == BatchKey("victim", "v", "vs", 9)
    assert batch_key("mallory", "m", "ms", batch, replica=False) == BatchKey("mallory", "m", "ms", 4)
    assert batch_key("mallory", "m", "", batch, replica=False) is None  # no series: not de-duplicated
    assert batch_key("mallory", "m", "ms", pb.OutcomeBatch(), replica=False) is None
