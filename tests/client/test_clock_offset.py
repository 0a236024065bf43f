"""The sender's clock offset, measured from the messages it sends (client/clock_offset.py),
and a probe permit's hold read through it (client/probes.py, LocalView.grant)."""

from __future__ import annotations

import logging

import pytest
from mission_control.client.clock_offset import KEEP_SAMPLES, WINDOW_SECS, ClockOffset
from mission_control.client.policy import default_policy
from mission_control.client.probes import HOLD_SKEW_SECS, hold_end
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

#: The sender's wall clock is this far behind the receiver's monotonic clock (ahead: a wall
#: clock reads far more than a monotonic one).
OFFSET = -10_000.0


def _near(value: float) -> object:
    return pytest.approx(value, abs=1e-6)


def _feed(offset: ClockOffset, start: float, count: int, delay: float, every: float = 1.0) -> float:
    """``count`` messages, one every ``every`` seconds from ``start`` (receiver's monotonic
    clock), each ``delay`` on the way; returns when the last arrived."""
    at = start
    for i in range(count):
        at = start + i * every
        offset.sample(at - delay - OFFSET, at)
    return at


def test_no_sample_no_estimate() -> None:
    assert ClockOffset().estimate() is None


def test_the_least_delay_is_kept_and_a_stalled_message_does_not_raise_it() -> None:
    offset = ClockOffset()
    at = _feed(offset, 0.0, 5, delay=0.02)
    offset.sample(at + 8.0 - 5.0 - OFFSET, at + 8.0)  # stalled 5 s
    offset.sample(at + 8.5 - 6.0 - OFFSET, at + 8.5)  # stalled 6 s
    assert offset.estimate() == _near(OFFSET + 0.02)


def test_a_quiet_stream_keeps_its_sample_when_a_stalled_burst_comes() -> None:
    """Samples older than the window go only once KEEP_SAMPLES messages came after them:
    a burst stalled on the way after a long quiet does not take the estimate up."""
    offset = ClockOffset()
    _feed(offset, 0.0, 1, delay=0.01)
    _feed(offset, 10 * WINDOW_SECS, KEEP_SAMPLES - 1, delay=4.0, every=0.001)
    assert offset.estimate() == _near(OFFSET + 0.01)


def test_the_sender_stepping_forward_is_taken_at_once() -> None:
    offset = ClockOffset()
    at = _feed(offset, 0.0, 5, delay=0.02)
    # sender's clock 10 s ahead from now: its samples are 10 s smaller
    offset.sample(at + 1 + 10.0 - 0.02 - OFFSET, at + 1)
    assert offset.estimate() == _near(OFFSET - 10.0 + 0.02)


def test_the_sender_stepping_back_is_followed_within_seconds() -> None:
    """Stepped back, its holds read as ending earlier than they do (safe) until a few
    messages over STEP_SPAN_SECS show the step; then the estimate follows it, long before
    the window would have let the older samples go."""
    offset = ClockOffset()
    at = _feed(offset, 0.0, 5, delay=0.02)
    step = 30.0
    _feed(offset, at + 1, 2, delay=0.02 + step)
    assert offset.estimate() == _near(OFFSET + 0.02)  # not yet: two messages, one second
    _feed(offset, at + 3, 1, delay=0.03 + step)
    # followed, early by the second between the last message before the step and the first
    # after it (the stamps show a step of at least 29 s), never late
    assert offset.estimate() == _near(OFFSET + step + 0.02 - 1.0)


def test_the_receivers_wall_clock_stepping_changes_nothing() -> None:
    """Samples are taken on the receiver's monotonic clock: stepping its wall clock (either
    way) moves neither the estimate nor where a hold ends."""
    walls = {"now": 5000.0}
    view = LocalView(clock=lambda: 10.0, wall=lambda: walls["now"])
    offset = ClockOffset()
    offset.sample(2000.0, 9.99)  # sender's wall 2000.0 at this process's monotonic 9.99
    ends = []
    for wall in (5000.0, 5030.0, 4970.0):
        walls["now"] = wall
        ends.append(hold_end(view.clock(), view.wall(), 2004.0, offset.estimate()))
    assert ends == [pytest.approx(2004.0 + (9.99 - 2000.0) - HOLD_SKEW_SECS)] * 3


def _grant(hold_until: float, number: int = 1) -> pb.ProbeGrant:
    grant = pb.ProbeGrant(service="svc", permits=1, generation=1, number=number, series=7)
    grant.ttl.FromNanoseconds(5 * 10**9)
    grant.hold_until.FromNanoseconds(int(hold_until * 1e9))
    return grant


def test_a_grant_from_a_sender_10_s_behind_is_used_through_its_offset(caplog) -> None:
    """Sender 10 s behind: read on this wall clock the hold is over (given back spent, and
    said); read through the measured offset the whole TTL is left."""
    now = 100.0
    wall = 50_000.0
    sender_now = wall - 10.0
    offset = ClockOffset()
    offset.sample(sender_now - 0.01, now - 0.005)
    hold_until = sender_now + 5.0 + 3.0  # TTL 5 plus the policy's timeout 3, from now

    policies = {"svc": default_policy("svc", timeout_secs=3.0)}
    measured = LocalView(policies, clock=lambda: now, wall=lambda: wall)
    measured.grant(_grant(hold_until), offset.estimate())
    assert len(measured.get("svc").permits) == 1

    with caplog.at_level(logging.WARNING, logger="mission_control.client.probes"):
        unmeasured = LocalView(policies, clock=lambda: now, wall=lambda: wall)
        unmeasured.grant(_grant(hold_until, number=2))
    assert len(unmeasured.get("svc").permits) == 0
    assert any("given back unused" in r.getMessage() for r in caplog.records)
