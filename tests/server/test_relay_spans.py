"""A follower holding its agents' batches through a long spell without a leader: bounded by
the agent sessions, not by the batches, and each failure counted once by the leader however
the agent sends its batches again (``server/relay_spans.py``, ``server/outcome_ledger.py``)."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import Hub
from mission_control.server.outcome_ledger import BatchKey, OutcomeLedger, batch_key
from mission_control.server.relay import MAX_IN_FLIGHT, LeaderRelay
from mission_control.server.relay_spans import KEEP_APART, MAX_SPANS, HeldSpans

#: Batches past the bound the relay had (4096): the oldest were summed without their name.
PAST_OLD_BOUND = 5000


class Leadership:
    instance_id = "f1"
    leading = False


def failed(n: int = 1) -> list[pb.OutcomeSummary]:
    return [pb.OutcomeSummary(service="svc", failures=n, trailing_failures=n)]


def key(sequence: int, agent: str = "a") -> BatchKey:
    return BatchKey(agent, "s", "x", sequence)


def leader_counts(
    ledger: OutcomeLedger, held: list[tuple[BatchKey | None, str, list[pb.OutcomeSummary]]]
) -> int:
    """Failures a leader counts of what a relay gives it (its ledger asked first)."""
    return sum(
        sum(s.failures for s in summaries)
        for name, _, summaries in held
        if name is None or ledger.first_time(name)
    )


def relayed(batches: list[pb.ConnectRequest]) -> list[tuple[BatchKey | None, str, list[pb.OutcomeSummary]]]:
    """What a leader takes from the relay's requests: each batch under the name it reads."""
    out = []
    for request in batches:
        batch = request.outcomes
        name = batch_key("replica.f1", "r", "rs", batch, replica=True)
        out.append((name, "replica.f1", list(batch.summaries)))
    return out


def test_an_agent_sending_everything_again_past_the_old_bound_is_counted_once() -> None:
    """No leader: an agent reports PAST_OLD_BOUND batches through the follower, its stream
    breaks, and it sends every one again (none was acknowledged). The follower holds each
    once; the leader counts each failure once."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    for _ in range(2):
        for sequence in range(1, PAST_OLD_BOUND + 1):
            relay.add_batch(key(sequence), "a", failed())
    assert leader_counts(OutcomeLedger(), relay.drain()) == PAST_OLD_BOUND


def test_the_leader_counts_once_what_the_agent_also_sent_it_directly_in_either_order() -> None:
    """The agent failed over to the leader and sent its batches there too: whichever comes
    first, the follower's merged ranges or the agent's own batches, each counts once."""
    for relay_first in (True, False):
        relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
        for sequence in range(1, PAST_OLD_BOUND + 1):
            relay.add_batch(key(sequence), "a", failed())
        relay.connected = True
        sent = relayed(relay._outgoing())
        assert len(sent) < 100  # ranges, not batches
        ledger = OutcomeLedger()
        direct = [(key(s), "a", failed()) for s in range(1, PAST_OLD_BOUND + 1)]
        both = sent + direct if relay_first else direct + sent
        assert leader_counts(ledger, both) == PAST_OLD_BOUND  # type: ignore[arg-type]


def test_a_range_that_overlaps_a_batch_counted_before_is_not_counted_its_other_batches_still_are() -> None:
    ledger = OutcomeLedger()
    assert ledger.first_time(key(5))
    assert not ledger.first_time(BatchKey("a", "s", "x", 9, first=3))  # 5 counted: none of 3..9
    assert [s for s in range(1, 11) if ledger.first_time(key(s))] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert ledger.first_time(BatchKey("a", "s", "x", 20, first=11))
    assert not any(ledger.first_time(key(s)) for s in range(11, 21))
    assert ledger.resent == 12


def test_a_range_reaching_below_the_window_is_not_counted_and_costs_bounded_work() -> None:
    ledger = OutcomeLedger(window=8)
    assert ledger.first_time(key(20))
    assert not ledger.first_time(BatchKey("a", "s", "x", 21, first=10))  # 10, 11: cannot tell
    assert ledger.too_old == 1
    assert ledger.first_time(BatchKey("a", "s", "x", 2**62, first=22))  # a hostile range
    assert all(s.seen.bit_length() <= 8 for s in ledger._sessions.values())


def test_a_hundred_busy_agents_through_a_30_s_spell_stay_far_below_the_bound() -> None:
    """100 agents, a batch each every 50 ms for 30 s, no leader: ~37 spans per agent."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    batches = 30 * 20
    for sequence in range(1, batches + 1):
        for agent in range(100):
            relay.add_batch(key(sequence, f"agent-{agent}"), f"agent-{agent}", failed())
    held = len(relay._batches)
    assert held <= 100 * (KEEP_APART + batches // 128 + 1) < MAX_SPANS // 4
    assert relay._batches.dropped == 0
    assert leader_counts(OutcomeLedger(), relay.drain()) == 100 * batches


def test_batches_are_merged_once_the_leader_stops_acknowledging() -> None:
    """A leader that stalled (the link up, nothing acknowledged): at most MAX_IN_FLIGHT
    batches go up, the rest is merged and held."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    relay.connected = True
    sent: list[pb.ConnectRequest] = []
    for sequence in range(1, PAST_OLD_BOUND + 1):
        relay.add_batch(key(sequence), "a", failed())
        sent += relay._outgoing()
    assert len(sent) == MAX_IN_FLIGHT == len(relay._unacked)
    assert len(relay._batches) < KEEP_APART + PAST_OLD_BOUND // 128 + 2
    for sequence in range(1, PAST_OLD_BOUND + 1):  # the agent reconnected: all again
        relay.add_batch(key(sequence), "a", failed())
    ledger = OutcomeLedger()
    assert leader_counts(ledger, relayed(sent)) == MAX_IN_FLIGHT
    assert leader_counts(ledger, relay.drain()) == PAST_OLD_BOUND - MAX_IN_FLIGHT


def test_past_the_bound_nothing_is_counted_twice() -> None:
    """Past MAX_SPANS (here 2) a session's two oldest spans are merged over the gap between
    them, or, when every session has one, the oldest session's span is given up: batches
    may go uncounted, none is counted twice."""
    held = HeldSpans(max_spans=2)
    for sequence in (1, 2, 4, 6):  # 3 and 5 went through another replica
        held.add(key(sequence), "a", failed(), merge=False)
    assert len(held) == 2 and held.dropped == 0
    ledger = OutcomeLedger()
    elsewhere = [(key(3), "a", failed()), (key(5), "a", failed())]
    assert leader_counts(ledger, elsewhere + held.take()) <= 6  # 1..6, each once at most
    for agent in ("b", "c", "d"):
        held.add(key(1, agent), agent, failed())
    assert len(held) == 2 and held.dropped == 1
    assert [name.agent_id for name, _, _ in held.take()] == ["c", "d"]


def test_a_batch_the_leader_acknowledged_sent_again_joins_no_range() -> None:
    """The agent's stream broke before the follower passed on the leader's acknowledgement:
    it sends batches 2 and 3 again, then new ones, while the link is down. Were 2 and 3 merged
    with the new ones, the leader (which counted them) would refuse the whole range."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    relay.connected = True
    for sequence in (1, 2, 3):
        relay.add_batch(key(sequence), "a", failed())
    ledger = OutcomeLedger()
    sent = relay._outgoing()
    assert leader_counts(ledger, relayed(sent)) == 3
    relay._unacked.ack(sent[-1].outcomes.sequence)  # the leader's acknowledgement
    relay._batches.acked(sent[-1].outcomes.sequence)
    relay.connected = False
    for sequence in range(2, 104):
        relay.add_batch(key(sequence), "a", failed())
    assert leader_counts(ledger, relay.drain()) == 100  # 4..103


def resent(sequence: int) -> list[pb.OutcomeSummary]:
    """A summary of a batch its agent sends again (as ``UnackedBatches.resend(marked=True)``)."""
    return [pb.OutcomeSummary(service="svc", failures=1, trailing_failures=1, origin_first=sequence)]


def test_what_an_agent_sends_again_after_moving_between_replicas_is_kept_apart() -> None:
    """No leader for the follower: the agent sends 1..40 through it, moves to the leader and
    sends them again there (counted), then comes back and sends them again (marked) and
    41..200 new. What the follower held of 1..40 must not take 41.. in: the leader refuses a
    range with one batch it counted, and would lose the new ones with it."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    for sequence in range(1, 41):
        relay.add_batch(key(sequence), "a", failed())
    ledger = OutcomeLedger()
    assert leader_counts(ledger, [(key(s), "a", failed()) for s in range(1, 41)]) == 40
    for sequence in range(1, 41):
        relay.add_batch(key(sequence), "a", resent(sequence))
    for sequence in range(41, 201):
        relay.add_batch(key(sequence), "a", failed())
    assert leader_counts(ledger, relay.drain()) == 160


def test_a_batch_sent_again_after_a_newer_one_was_acknowledged_still_goes_up() -> None:
    """An agent sent batch 84 over a stream to another replica that broke, then 85 here; the
    leader acknowledged 85; then the agent, back here, sends 84 again. The relay took the
    acknowledgement of 85 for one of everything up to 85 and passed 84 on to no leader: its
    failure was counted by none (simulation seed 96049 at --active 80, I5)."""
    spans = HeldSpans()
    spans.add(key(85), "a", failed(), merge=False)
    ((sent_key, _, _),) = spans.take()
    spans.sent(sent_key, 7)
    spans.acked(7)
    assert spans.holds(key(85))  # acknowledged: the agent sending it again is not passed on
    assert not spans.holds(key(84))  # the old code: True, and 84 was dropped
    spans.add(key(84), "a", failed(), merge=False)
    assert [k.sequence for k, _, _ in spans.take()] == [84]


def test_new_batches_on_a_stream_after_a_move_join_no_range_of_the_stream_before() -> None:
    """The follower's link is down. The agent sends 1..50 through it (stream 1), moves to the
    leader and sends them again there (counted, acknowledged), comes back (stream 2) with
    nothing left to send again and reports 51..100. Were 51.. merged into the range of 1..,
    the leader would refuse it whole and the follower still acknowledge it (the old code
    counted 32 of the 50 new failures)."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    for sequence in range(1, 51):
        relay.add_batch(key(sequence), "a", failed(), 1)
    ledger = OutcomeLedger()
    assert leader_counts(ledger, [(key(s), "a", resent(s)) for s in range(1, 51)]) == 50
    for sequence in range(51, 101):
        relay.add_batch(key(sequence), "a", failed(), 2)
    assert leader_counts(ledger, relay.drain()) == 50


def test_a_batch_sent_again_that_the_follower_holds_inside_a_range_is_held_on_its_own() -> None:
    """The follower's link is down; it holds the agent's 1..50 (1..18 merged into a range).
    The agent moves to the leader, which counts 1..10 before that stream breaks too; back at
    the follower it sends 1..50 again, marked. The leader refuses the range (1..10 counted):
    11..18 must still count, so the follower holds each again on its own (the old code took
    each for held already, acknowledged it and passed it on to no leader: 32 of 40)."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    for sequence in range(1, 51):
        relay.add_batch(key(sequence), "a", failed(), 1)
    ledger = OutcomeLedger()
    assert leader_counts(ledger, [(key(s), "a", resent(s)) for s in range(1, 11)]) == 10
    for sequence in range(1, 51):
        relay.add_batch(key(sequence), "a", resent(sequence), 3)
    assert leader_counts(ledger, relay.drain()) == 40


def test_past_the_bound_a_batch_held_again_inside_a_range_is_given_up_first_never_summed_into_it() -> None:
    """Range 1..3, then batch 2 sent again (held again on its own), then 4; past the bound
    (2) the batch held twice goes first, and is never summed into 1..3 (it would count
    twice): also when it is not marked as held twice."""
    for spare in (True, False):
        held = HeldSpans(max_spans=2, keep_apart=0)
        for sequence in (1, 2, 3):
            held.add(key(sequence), "a", failed(), stream=1)
        held.add(key(2), "a", resent(2), apart=True, stream=2, spare=spare)
        held.add(key(4), "a", failed(), stream=2)
        assert len(held) == 2 and (held.spared, held.dropped) == ((1, 0) if spare else (0, 1))
        assert leader_counts(OutcomeLedger(), held.take()) == 4


def test_an_agent_sending_everything_again_to_its_follower_fills_no_more_than_the_bound() -> None:
    """100 busy agents through a 30-s spell, each then sending everything again to the same
    follower (its stream broke): what a range holds is held again on its own, up to the
    bound, then given up first — nothing counted as dropped, each failure counted once."""
    relay = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    batches = 30 * 20
    for stream, summaries in ((1, lambda s: failed()), (2, resent)):
        for sequence in range(1, batches + 1):
            for agent in range(100):
                relay.add_batch(
                    key(sequence, f"agent-{agent}"), f"agent-{agent}", summaries(sequence), stream
                )
    assert len(relay._batches) == MAX_SPANS and relay._batches.dropped == 0
    assert leader_counts(OutcomeLedger(), relay.drain()) == 100 * batches
