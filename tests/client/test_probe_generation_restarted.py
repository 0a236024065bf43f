"""A breaker's generations start over when the control plane's store lost it (a wipe, or an
idle CLOSED breaker forgotten): the agent's probe results count for the generation in force
even when an earlier one it counted for was higher. Before, a snapshot that no longer listed
the breaker left the tally counting for the old generation, and the results of every probe
of the new, lower one were left out: the HALF_OPEN never ended, and the leader kept the
permit for its hold (simulation schedule 52155 at ``--active 40``: two agents asked for 7 s
without a permit after etcd was wiped)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .test_probe_permits import SERVICE, breaker, view_at
from .test_probe_reconnect_view import numbered


def _probe(view, clock, generation: int, number: int, failed: bool) -> pb.OutcomeSummary:  # type: ignore[no-untyped-def]
    view.grant(numbered(generation, number))
    state = view.get(SERVICE)
    probe = state.take_permit(clock(), view.stream)
    assert probe is not None and probe.generation == generation
    with state.lock:
        state.probe_ended(probe, failed=failed)
    tally = state.drain(clock())
    assert tally is not None, "the probe's result was left out"
    return tally.to_proto(SERVICE)


def test_probe_results_count_for_a_generation_below_one_counted_before_the_breaker_was_dropped() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 4)
    before = _probe(view, clock, 4, 41, failed=False)
    assert (before.probe_generation, before.probe_successes) == (4, 1)

    # the store lost the breaker: a new stream's snapshot does not list it, and it trips
    # again from generation 1
    view.forget_fleet()
    view.apply_snapshot({}, [])
    view.connected = True
    assert view.get(SERVICE).fleet is None
    view.set_breaker(breaker(BreakerState.OPEN, 1))
    view.set_breaker(breaker(BreakerState.HALF_OPEN, 2))

    after = _probe(view, clock, 2, 7, failed=True)
    assert (after.probe_generation, after.probe_failures, list(after.probe_grants)) == (2, 1, [7])
