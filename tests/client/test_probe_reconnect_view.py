"""An agent's fleet probe across its reconnect (injected clock): the result names the grant
it ran under; on the new stream the agent says which probe of the stream before still runs,
and asks for no permit until it ended (tests/server/test_probe_reconnect.py: real processes)."""

from __future__ import annotations

from mission_control.client.admission import Admission
from mission_control.client.breaker import BreakerState
from mission_control.client.connection import ControlPlaneConnection
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .test_probe_permits import SERVICE, breaker, grant, view_at


class Asks:
    """Stands in for the connection: records the probe requests."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def ask_probe(self, service: str) -> None:
        self.asked.append(service)


def numbered(generation: int, number: int) -> pb.ProbeGrant:
    message = grant(generation)
    message.number, message.series = number, 77
    return message


def reconnect(view: LocalView) -> None:
    view.forget_fleet()
    view.apply_snapshot({}, [breaker(BreakerState.HALF_OPEN, 3)])
    view.connected = True


def test_a_probe_result_names_its_grant() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    view.grant(numbered(3, 41))
    state = view.get(SERVICE)
    probe = state.take_permit(clock(), view.stream)
    assert probe is not None and probe.number == 41
    with state.lock:
        state.probe_ended(probe, failed=False)
    summary = state.drain(clock()).to_proto(SERVICE)  # type: ignore[union-attr]
    assert (summary.probe_successes, list(summary.probe_grants)) == (1, [41])


def test_a_probe_from_before_a_reconnect_is_said_running_and_no_permit_is_asked_meanwhile() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    asks = Asks()
    admission = Admission(view, asks)  # type: ignore[arg-type]
    view.grant(numbered(3, 41))
    state = view.get(SERVICE)
    probe = state.take_permit(clock(), view.stream)
    assert probe is not None
    state.drain(clock())
    reconnect(view)
    summary = state.drain(clock()).to_proto(SERVICE)  # type: ignore[union-attr]
    assert list(summary.probes_running) == [41]  # said once, on the new stream
    admission.breaker(state, clock())  # refused: no permit here
    assert asks.asked == []  # not while the probe from before runs
    with state.lock:
        state.probe_ended(probe, failed=False)
    summary = state.drain(clock()).to_proto(SERVICE)  # type: ignore[union-attr]
    assert list(summary.probe_grants) == [41] and not summary.probes_running
    clock.now += 0.2
    admission.breaker(state, clock())
    assert asks.asked == [SERVICE]


def test_a_probe_request_queued_before_the_break_is_not_sent_while_that_probe_runs() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    connection = ControlPlaneConnection(["127.0.0.1:1"], "a", "s", view)  # never started
    ask = pb.ConnectRequest(probe_request=pb.ProbeRequest(service=SERVICE))
    view.grant(numbered(3, 41))
    state = view.get(SERVICE)
    probe = state.take_permit(clock(), view.stream)
    assert not connection._stale_ask(ask)
    reconnect(view)
    assert connection._stale_ask(ask)  # it would come before the batch saying 41 runs
    with state.lock:
        state.probe_ended(probe, failed=False)
    assert not connection._stale_ask(ask)


def test_the_probe_from_before_is_said_in_a_batch_of_its_own_sent_first() -> None:
    """Ahead of the batches sent again: a refusal in one of those makes the agent one that
    asks, and the control plane would grant it a permit before it knew of the probe."""
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    view.grant(numbered(3, 41))
    state = view.get(SERVICE)
    assert state.take_permit(clock(), view.stream) is not None
    with state.lock:
        state.tally.rejected += 1
    reconnect(view)
    said = view.running_said()
    assert [(s.service, list(s.probes_running), s.rejected) for s in said] == [(SERVICE, [41], 0)]
    assert view.running_said() == []  # once
    assert state.drain(clock()).to_proto(SERVICE).rejected == 1  # type: ignore[union-attr]
