"""A sender's clock stepped, and stamps that are no time (client/clock_offset.py): the
estimate follows a step back within seconds, a wrong stamp rules it for seconds at most,
and a delay never reads as a step (a permit must never outlive its TTL, I3)."""

from __future__ import annotations

import math

import pytest
from mission_control.client.clock_offset import STEP_SPAN_SECS, WINDOW_SECS, ClockOffset

#: The sender's wall clock reads this much more than the receiver's monotonic clock.
AHEAD = 1.7e9
DELAY = 0.02


def _near(value: float) -> object:
    return pytest.approx(value, abs=1e-5)


def _feed(offset: ClockOffset, start: float, secs: float, step: float = 0.0, delay: float = DELAY) -> float:
    """A message every 0.1 s for ``secs`` seconds from ``start`` (receiver's monotonic
    clock), the sender's clock ``step`` seconds off its first reading; returns the time
    after the last."""
    at = start
    while at < start + secs - 1e-9:
        offset.sample(at - delay + AHEAD + step, at)
        at += 0.1
    return at


def _truth(step: float = 0.0) -> float:
    return -AHEAD - step + DELAY


def _followed(estimate: float | None, truth: float) -> bool:
    """A step followed: early (holds read as ending sooner) by no more than the time between
    the messages on either side of it, never late."""
    return estimate is not None and truth - 0.1 - 1e-5 <= estimate <= truth + 1e-5


@pytest.mark.parametrize("first", [0.0, 30.0], ids=["back", "forward-then-back"])
def test_a_sender_stepped_back_is_followed_before_the_window_would_let_it(first: float) -> None:
    offset = ClockOffset()
    at = _feed(offset, 0.0, 10.0)
    at = _feed(offset, at, 10.0, step=first)
    assert offset.estimate() == _near(_truth(first))
    at = _feed(offset, at, 1.0, step=-30.0)
    # the step not shown yet: holds read as ending earlier than they do
    assert offset.estimate() is not None and offset.estimate() < _truth(-30.0) - 1.0
    _feed(offset, at, STEP_SPAN_SECS + 0.5, step=-30.0)
    assert _followed(offset.estimate(), _truth(-30.0))


@pytest.mark.parametrize("ahead", [30.0, 1e9], ids=["30s", "far-future"])
def test_one_message_stamped_ahead_rules_the_estimate_for_seconds_at_most(ahead: float) -> None:
    offset = ClockOffset()
    at = _feed(offset, 0.0, 10.0)
    offset.sample(at - DELAY + AHEAD + ahead, at)
    assert offset.estimate() == _near(_truth(ahead))  # taken at once: early, never late
    _feed(offset, at + 0.1, STEP_SPAN_SECS + 0.5)
    assert _followed(offset.estimate(), _truth())


def test_a_stamp_far_in_the_past_is_never_taken() -> None:
    offset = ClockOffset()
    at = _feed(offset, 0.0, 10.0)
    offset.sample(1.0, at)
    at = _feed(offset, at + 0.1, 5.0)
    assert offset.estimate() == _near(_truth())


@pytest.mark.parametrize("stamp", [0.0, -5.0, -AHEAD, math.nan, math.inf, -math.inf])
def test_a_stamp_that_is_no_time_is_no_sample(stamp: float) -> None:
    """Zero or negative would put the estimate against this monotonic clock itself (holds
    ~1.7e9 s off): read as from a peer that does not stamp."""
    offset = ClockOffset()
    offset.sample(stamp, 5.0)
    assert offset.estimate() is None
    at = _feed(offset, 0.0, 3.0)
    for _ in range(5):
        offset.sample(stamp, at)
        at += 0.5
    assert offset.estimate() == _near(_truth())


def test_messages_late_for_a_long_while_never_read_as_a_step() -> None:
    """Every message from some point 30 s late on the way (a stream that stalled and stays
    behind): the stamps never go back, so the estimate stays the least delay (I3)."""
    offset = ClockOffset()
    at = _feed(offset, 0.0, 10.0)
    _feed(offset, at + 30.0, WINDOW_SECS / 2, delay=30.0 + DELAY)
    assert offset.estimate() == _near(_truth())


def test_a_stalled_burst_after_a_step_back_does_not_take_the_estimate_past_it() -> None:
    """A step back, then the stream stalls 20 s and delivers its backlog at once: the
    backlog arrives within a moment (no span), so only messages on time show the step."""
    offset = ClockOffset()
    at = _feed(offset, 0.0, 10.0)
    for i in range(200):  # sent over 20 s after the step, all delivered within 0.2 s
        offset.sample(at + 0.1 * i - DELAY + AHEAD - 30.0, at + 20.0 + 0.001 * i)
    assert offset.estimate() == _near(_truth())
    _feed(offset, at + 20.3, STEP_SPAN_SECS + 0.5, step=-30.0)
    assert _followed(offset.estimate(), _truth(-30.0))


@pytest.mark.parametrize("congested_from", [-2.0, 0.0], ids=["before-the-step", "at-the-step"])
@pytest.mark.parametrize("late", [1.5, 6.0])
def test_a_step_back_while_every_message_is_late_never_reads_holds_late(
    congested_from: float, late: float
) -> None:
    """The sender's clock steps back 10 s while every message from some point on is ``late``
    s on the way (a congested link): the step shows, and the estimate follows it no further
    than the stamps went back. It took the least of the step's messages, every one of them
    ``late`` too large: holds read ``late`` past their end, probes run past the granter's
    hold (I3)."""
    offset = ClockOffset()
    step_at = 12.0
    worst = -math.inf
    for i in range(1, 400):
        sent = i * 0.1  # on the receiver's monotonic clock
        delay = late if step_at + congested_from <= sent < 30.0 else DELAY
        stepped = -10.0 if sent >= step_at else 0.0
        offset.sample(sent + AHEAD + stepped, sent + delay)
        estimate = offset.estimate()
        assert estimate is not None
        worst = max(worst, estimate - (-AHEAD - stepped))  # above the true offset: read late
    assert worst <= DELAY + 1e-5
    assert _followed(offset.estimate(), _truth(-10.0))
