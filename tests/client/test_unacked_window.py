"""An agent whose acknowledgements come late (its replica's link to the leader is slow) keeps
working: its window of unacknowledged batches never blocks; past its bound the oldest are given
up (counted as dropped, sent with the next batch) and the newest stay to be sent again."""

from __future__ import annotations

import inspect

from mission_control.client.connection import MAX_UNACKED, ControlPlaneConnection
from mission_control.client.view import UnackedBatches
from mission_control.resilience.v1 import control_plane_pb2 as pb


def test_late_acknowledgements_never_stall_the_agent() -> None:
    flush = inspect.signature(ControlPlaneConnection).parameters["flush_interval"].default
    assert (MAX_UNACKED, flush) == (1000, 0.05)  # the README's figures: about 50 s of batches
    window = UnackedBatches(MAX_UNACKED)
    for _ in range(MAX_UNACKED + 5):  # no acknowledgement comes meanwhile
        batch = window.batch([pb.OutcomeSummary(service="svc", failures=1)])
    assert len(window) == MAX_UNACKED
    assert window.dropped == 5 and batch.dropped == 5 - 4  # each batch carries the newly dropped
    resent = window.resend()
    assert [b.sequence for b in (resent[0], resent[-1])] == [6, MAX_UNACKED + 5]
    window.ack(MAX_UNACKED)  # late, cumulative
    assert [b.sequence for b in window.resend()] == list(range(MAX_UNACKED + 1, MAX_UNACKED + 6))


def test_batches_sent_again_say_so_and_stay_as_first_sent() -> None:
    from mission_control.client.view import UnackedBatches
    from mission_control.resilience.v1 import control_plane_pb2 as pb

    window = UnackedBatches()
    window.batch([pb.OutcomeSummary(service="svc", failures=1)])
    (again,) = window.resend(marked=True)
    assert [s.origin_first for s in again.summaries] == [again.sequence]
    assert [s.origin_first for s in window.resend()[0].summaries] == [0]
