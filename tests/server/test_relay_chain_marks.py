"""A batch its agent marked as sent again keeps the mark when one follower passes it on to
another (``outcome_ledger.named``): the second keeps it apart from the new batches after
it, as the first did, so a range the leader refuses never takes new batches along
(``server/relay_spans.py``)."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import Hub
from mission_control.server.outcome_ledger import OutcomeLedger
from mission_control.server.relay import LeaderRelay

from .test_relay_spans import failed, key, leader_counts, relayed, resent


class Leadership:
    instance_id = "f1"
    leading = False


def test_a_batch_sent_again_stays_apart_behind_a_second_follower() -> None:
    """The agent sent 1..6 through follower C, which became the leader and counted them;
    they were not acknowledged, so the agent sends them again (marked) through follower A,
    then 7..40 new. A passes each on alone to follower B (it took B for the leader), which
    cannot pass them on at once and merges. Were the marks lost on the way, B would merge 1..10
    into one range, which the leader refuses whole (1..6 counted): 7..10 never counted
    (simulation seed 31553 at --active 40, I5)."""
    leader = OutcomeLedger()
    assert leader_counts(leader, [(key(s), "a", failed()) for s in range(1, 7)]) == 6
    first = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    first.connected = True  # each batch goes on alone
    for sequence in range(1, 7):
        first.add_batch(key(sequence), "a", resent(sequence))
    for sequence in range(7, 41):
        first.add_batch(key(sequence), "a", failed())
    passed: list[pb.ConnectRequest] = first._outgoing()
    assert len(passed) == 40
    second = LeaderRelay(Leadership(), Hub())  # type: ignore[arg-type]
    for name, agent, summaries in relayed(passed):
        assert name is not None
        second.add_batch(name, agent, summaries)
    held = second.drain()
    assert any(name is not None and name.lowest < name.sequence for name, _, _ in held)  # it merged
    assert leader_counts(leader, held) == 34  # 7..40, each once
