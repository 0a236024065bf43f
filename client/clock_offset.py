"""How far a peer's wall clock is from this process's clocks, from the messages it sends.

Every ``ConnectResponse`` says when its sender wrote it (``sent_at``, the sender's wall
clock). For each, ``received - sent_at`` (``received`` on this process's *monotonic*
clock) is the clocks' offset plus the message's delay on the way, and a delay is never
negative: the least of these over recent messages is the offset plus the smallest delay.
A message stalled in the stream only gives a larger one, which the least of them ignores
as long as one message in the window came through without a stall. A probe permit's hold
end (``ProbeGrant.hold_until``, the granter's wall clock) plus that estimate is when the
hold ends on this monotonic clock, late by no more than the smallest delay: that is what
``HOLD_SKEW_SECS`` (``client/probes.py``) still has to cover, with the clocks' drift.

Kept on the monotonic clock, the estimate does not move when this process's wall clock is
stepped. When the sender's clock steps forward its messages give smaller samples, taken at
once. When it steps back they give larger ones; the estimate follows once the step is
shown: a message whose ``sent_at`` is earlier than the one before it (on one stream
messages arrive in the order they were sent, so a monotone clock never does that), with a
sample more than :data:`STEP_SECS` above the estimate, followed by messages all that far
above it for at least :data:`STEP_SAMPLES` messages over :data:`STEP_SPAN_SECS` — then
the samples from before it are let go of and the least of the new ones is the estimate, but
never more than the estimate before the step plus how far the stamps went back (the step is
at least that: a message is sent after the one before it). Messages all delayed since the
step would otherwise take the estimate up by their delay and holds would be read that late;
this way a delay only makes them read early, by as much as the time between the messages
on either side of the step (a fraction of a second on a busy stream), until that bound
leaves the window. Until the step shows holds are read as ending earlier than they do
(probes cut short, never running past a hold). Delays alone never show as a step: a
message can only be later than the one before it by as much as it arrived later, so its
``sent_at`` does not go back; one stalled message is one sample, never a run. A message
stamped far ahead of the others (a clock stepped forward and back, a wrong stamp) is taken
at once and let go of the same way, within a few seconds. A sample is only let go of by age once at least
:data:`KEEP_SAMPLES` messages came after it: a stream that was quiet for a while and then
delivers a stalled message keeps the sample from before. A ``sent_at`` that is not a
positive finite time (unset by a faulty peer, zero, negative) is no sample: read as from a
peer that does not stamp its messages.

One estimate measures one stream (one sender process): a sender restarted on its address,
or another replica behind it, may run another clock, and one set back by less than it was
down sends no stamp earlier than the last before. A stream quiet for longer than a step back
of its sender shows no step either (its stamps do not go back); nor does a sender whose
clock drifts slow against this one: their holds are read early (safe) until the samples from
before leave the window — a minute, or the :data:`KEEP_SAMPLES` messages kept whatever their
age (8 minutes on a stream with a message every 30 s: 7.5 s early at a drift of 1 s a minute).

Pure logic with an injected clock, and the (rate-limited) warnings of clocks that disagree
and of permits that arrive spent.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from mission_control.resilience.v1 import control_plane_pb2 as pb

__all__ = [
    "DISAGREE_SECS",
    "KEEP_SAMPLES",
    "STEP_SAMPLES",
    "STEP_SECS",
    "STEP_SPAN_SECS",
    "WINDOW_SECS",
    "ClockOffset",
    "disagree",
    "spent",
    "usable",
]

#: Samples older than this are let go of (when enough newer ones remain).
WINDOW_SECS = 60.0
#: Samples kept whatever their age (the newest ones).
KEEP_SAMPLES = 16
#: Samples kept at most (the window of a busy stream is cut to the newest ones).
MOST_SAMPLES = 4096
#: Clocks this far apart are worth a warning (the estimate copes, but other parts of a
#: deployment compare wall clocks too: logs, audit records, leases' periods).
DISAGREE_SECS = 3.0
#: A sample this far above the estimate, from a message stamped earlier than the one before
#: it, may start a step of the sender's clock back.
STEP_SECS = 1.0
#: Messages (counting the first) all that far above the estimate that show the step...
STEP_SAMPLES = 3
#: ...received over at least this long.
STEP_SPAN_SECS = 2.0


def usable(sent_at: float) -> bool:
    """Whether ``sent_at`` can be a time on a wall clock (a positive finite number)."""
    return math.isfinite(sent_at) and sent_at > 0.0


class ClockOffset:
    """The least ``received - sent_at`` over a bounded recent window of messages of one
    sender (``received`` on this monotonic clock, ``sent_at`` on the sender's wall clock)."""

    __slots__ = ("_count", "_floor", "_last_sent", "_run", "_samples")

    def __init__(self) -> None:
        #: (received, sample, number of the message), received ascending; samples ascending
        #: too (a sample is dropped when a later one is no larger: it can never be the least
        #: again while the later one is kept, and it leaves the window first).
        self._samples: deque[tuple[float, float, int]] = deque()
        #: Messages sampled so far.
        self._count = 0
        #: ``sent_at`` of the message before (None: none yet).
        self._last_sent: float | None = None
        #: (received, sample) of the messages since a possible step back began.
        self._run: list[tuple[float, float]] = []
        #: The most the estimate may be once that step shows: the estimate before it plus
        #: how far the stamps went back (the step is at least that much).
        self._floor = math.inf

    def sample(self, sent_at: float, received: float) -> None:
        """A message sent at ``sent_at`` (sender's wall clock) arrived at ``received``;
        a ``sent_at`` that is no wall-clock time (:func:`usable`) is ignored."""
        if not usable(sent_at):
            return
        value = received - sent_at
        before, self._last_sent = self._last_sent, sent_at
        current = self.estimate()
        run = self._run
        if current is None or value <= current + STEP_SECS:
            run.clear()
        elif run or (before is not None and sent_at < before):
            if not run:
                assert before is not None
                self._floor = current + (before - sent_at)
            run.append((received, value))
            if len(run) >= STEP_SAMPLES and received - run[0][0] >= STEP_SPAN_SECS:
                self._samples.clear()
                # no later than the step the stamps show: messages all delayed since it
                # would take the estimate (and the holds read through it) up by their delay
                self._add(run[0][0], self._floor)
                for at, step_value in run:
                    self._add(at, step_value)
                run.clear()
                return
        self._add(received, value)

    def _add(self, received: float, value: float) -> None:
        samples = self._samples
        while samples and samples[-1][1] >= value:
            samples.pop()
        self._count += 1
        samples.append((received, value, self._count))
        while (
            len(samples) > 1
            and samples[0][0] < received - WINDOW_SECS
            and self._count - samples[0][2] >= KEEP_SAMPLES
        ):
            samples.popleft()
        while len(samples) > MOST_SAMPLES:
            samples.popleft()

    def estimate(self) -> float | None:
        """What to add to a wall-clock time of the sender to have it on this monotonic
        clock (late by at most the smallest delay); None before any sample."""
        return self._samples[0][1] if self._samples else None

    def clear(self) -> None:
        self._samples.clear()
        self._count = 0
        self._last_sent = None
        self._run.clear()
        self._floor = math.inf


_log = logging.getLogger("mission_control.client.probes")
#: Seconds between two warnings of one kind (and one sender or service).
WARN_EVERY_SECS = 60.0
_warned: dict[tuple[str, str], float] = {}


def _due(kind: str, key: str) -> bool:
    now = time.monotonic()
    if now < _warned.get((kind, key), -math.inf) + WARN_EVERY_SECS:
        return False
    if len(_warned) > 1024:
        _warned.clear()
    _warned[(kind, key)] = now
    return True


def spent(grant: pb.ProbeGrant, late: float, offset: float | None) -> None:
    """A probe permit goes back unused as soon as it came: too little of its hold is left
    (warned once a minute per service)."""
    if _due("spent", grant.service):
        _log.warning(
            "probe permit for %s (generation %d) arrived with too little of its hold left "
            "(%.2f s past its last use); given back unused. A grant late on the way, or %s",
            grant.service,
            grant.generation,
            late,
            "clocks apart by more than the margin"
            if offset is None
            else "a sender clock stepped back (its offset is re-measured within seconds)",
        )


def disagree(sender: str, offset: float) -> None:
    """``sender``'s wall clock is ``offset`` seconds behind this one's (negative: ahead);
    warned once a minute per sender when more than :data:`DISAGREE_SECS`."""
    if abs(offset) > DISAGREE_SECS and _due("offset", sender):
        _log.warning(
            "wall clock of %s is %.1f s %s this process's (or messages from it take that long): "
            "probe holds are read through the measured offset; synchronise the clocks",
            sender,
            abs(offset),
            "behind" if offset > 0 else "ahead of",
        )
