"""A follower acknowledges an agent's batch only once the leader acknowledged the relay batch
that carried it (``server/relay_acks.py``), in bounded memory."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import Hub
from mission_control.server.outcome_ledger import BatchKey
from mission_control.server.relay import LeaderRelay
from mission_control.server.relay_acks import OwedAcks


class Stream:
    """An agent's stream as the follower sees it: records the acknowledgements pushed."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    def push(self, message: object) -> bool:
        assert isinstance(message, pb.ConnectResponse) and message.HasField("outcome_ack")
        self.acks.append(message.outcome_ack.sequence)
        return True


class Leadership:
    instance_id = "f1"
    leading = False


def failures(n: int) -> list[pb.OutcomeSummary]:
    return [pb.OutcomeSummary(service="svc", failures=n, trailing_failures=n)]


def test_an_agent_batch_is_acknowledged_once_the_leader_acknowledged_the_relay_batch() -> None:
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    a, b = Stream(), Stream()
    relay.add_batch(BatchKey("a", "s", "x", 1), "a", failures(1))
    relay.owe_ack(a, 1)
    relay.add_batch(BatchKey("b", "s", "y", 7), "b", failures(2))
    relay.owe_ack(b, 7)
    first = [r.outcomes.sequence for r in relay._outgoing()]  # relay batches 1 and 2
    relay.add_batch(BatchKey("a", "s", "x", 2), "a", failures(1))
    relay.owe_ack(a, 2)
    second = [r.outcomes.sequence for r in relay._outgoing()]
    assert (first, second) == ([1, 2], [3])
    assert (a.acks, b.acks) == ([], [])  # queued for the leader is not counted by it
    relay.acks.acked(1)
    assert (a.acks, b.acks) == ([], [])  # a's batch 1 went up with b's, in relay batch 2
    relay.acks.acked(2)
    assert (a.acks, b.acks) == ([1], [7])
    relay.acks.acked(3)
    assert (a.acks, b.acks) == ([1, 2], [7])
    assert len(relay.acks) == 0


def test_an_ack_owed_after_its_batch_went_up_waits_for_the_next_flush() -> None:
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    a = Stream()
    relay.add_batch(BatchKey("a", "s", "x", 1), "a", failures(1))
    (sent,) = relay._outgoing()  # the relay flushed before the servicer owed the ack
    relay.owe_ack(a, 1)
    relay.acks.acked(sent.outcomes.sequence - 1)
    assert relay._outgoing() == [] and a.acks == []
    relay.acks.acked(sent.outcomes.sequence)
    assert a.acks == [1]


def test_a_leader_acknowledgement_before_the_flush_settles_nothing_early() -> None:
    acks = OwedAcks()
    a = Stream()
    acks.owe(a, 3)
    acks.acked(5)  # the leader acknowledged earlier relay batches
    assert a.acks == []
    acks.sent(6)
    assert a.acks == []
    acks.sent(6)  # nothing new owed
    acks.acked(6)
    assert a.acks == [3]


def test_an_ended_stream_is_owed_nothing() -> None:
    acks = OwedAcks()
    gone, kept = Stream(), Stream()
    acks.owe(gone, 1)
    acks.owe(kept, 4)
    acks.sent(1)
    acks.owe(gone, 2)
    acks.forget(gone)
    acks.sent(2)
    acks.acked(2)
    assert (gone.acks, kept.acks, len(acks)) == ([], [4], 0)


def test_rounds_past_the_bound_merge_and_never_acknowledge_early() -> None:
    acks = OwedAcks(max_rounds=4)
    streams = [Stream() for _ in range(3)]
    for relay_sequence in range(1, 101):  # the leader acknowledges nothing meanwhile
        acks.owe(streams[relay_sequence % 3], relay_sequence)
        acks.sent(relay_sequence)
    assert len(acks._rounds) == 4 and len(acks) <= 4 * 3
    acks.acked(96)  # the oldest round waits for the latest of those merged into it: 97
    assert [s.acks for s in streams] == [[], [], []]
    acks.acked(97)
    assert [s.acks for s in streams] == [[96], [97], [95]]
    acks.acked(100)
    assert [s.acks for s in streams] == [[96, 99], [97, 100], [95, 98]]


def test_a_follower_that_leads_acknowledges_what_it_counted_itself() -> None:
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    a = Stream()
    relay.add_batch(BatchKey("a", "s", "x", 1), "a", failures(1))
    relay.owe_ack(a, 1)
    relay._outgoing()
    relay.add_batch(BatchKey("a", "s", "x", 2), "a", failures(1))
    relay.owe_ack(a, 2)
    assert len(relay.drain()) == 2  # sent but not acknowledged, and not sent yet
    relay.acks.release_all()
    assert a.acks == [1, 2]
