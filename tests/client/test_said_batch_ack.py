"""The batch an agent back on a new stream sends first (which probes of the stream before
still run) is numbered after the batches it sends again behind it. Its acknowledgement
covers none of those: were the stream to break before they were taken, they go again on
the next one (acknowledgements are cumulative, and taking this one for all of them lost
two batches' failures in simulation schedule 50089: a follower holding them crashed, and
the new leader crashed between counting the batch said first and the ones behind it)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.connection import ControlPlaneConnection
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .test_probe_permits import SERVICE, view_at
from .test_probe_reconnect_view import numbered, reconnect

ENDPOINT = "127.0.0.1:1"


def test_the_acknowledgement_of_the_batch_said_first_leaves_the_ones_behind_it_to_send_again() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    view.grant(numbered(3, 41))
    assert view.get(SERVICE).take_permit(clock(), view.stream) is not None  # a probe runs
    connection = ControlPlaneConnection([ENDPOINT], "agent-1", "session", view, flush_interval=0.001)
    # sent on the stream before, never acknowledged
    earlier = [connection._unacked.batch([pb.OutcomeSummary(service=SERVICE, failures=1)]) for _ in range(3)]
    reconnect(view)  # a new stream got its snapshot
    connection.connected_event.set()
    requests = connection._requests(connection._epoch)
    assert next(requests).HasField("hello")
    said = next(requests).outcomes
    assert [list(s.probes_running) for s in said.summaries] == [[41]]
    again = [next(requests).outcomes for _ in earlier]
    assert [b.sequence for b in again] == [b.sequence for b in earlier] < [said.sequence]

    connection._apply(pb.ConnectResponse(outcome_ack=pb.OutcomeAck(sequence=said.sequence)), ENDPOINT)
    # the stream breaks before the batches behind it were taken: they go again
    assert [b.sequence for b in connection._unacked.resend()] == [b.sequence for b in earlier]

    # an acknowledgement of a batch sent after them covers them (cumulative, as before)
    connection._apply(pb.ConnectResponse(outcome_ack=pb.OutcomeAck(sequence=earlier[-1].sequence)), ENDPOINT)
    assert connection._unacked.resend() == []
