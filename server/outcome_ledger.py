"""Which outcome batches this replica's engine has counted, so a resent batch counts once.

An agent numbers its outcome batches within its session and sends a batch again, with
the same number, when the stream broke before the acknowledgement came back (the numbers
start again in each process: its hello names its ``outcome_series``). The batch
may come again over the same replica, over another replica (passed on with its origin)
or after a relay's own link to the leader broke. The leader asks the ledger before it
counts: ``(agent_id, session_id, series, sequence)`` names one batch.

What is guaranteed: one replica's engine never counts one batch twice while it remembers
the session — a session is remembered until it has been idle for ``idle_secs`` or until
``max_sessions`` newer sessions pushed it out. A batch more than ``window`` sequence numbers
below the newest one counted for its session is not counted (it cannot be told from a
resend; counted in ``too_old``). The ledger lives in the replica's memory: a new leader has
not seen what an earlier leader counted, and counts a batch that earlier leader took but did
not acknowledge. That is not a double count — each leader's engine starts its failure
counts afresh, and an earlier leader's counts died with its term (none is taken from a
stored breaker record: see ``server/stored_counts.py``).

A follower that could not pass batches on for a while merges one session's batches into a
range (``BatchKey.first`` .. ``sequence``) with their outcomes summed. A range counts whole or
not at all: not when any batch in it was counted before (its sums cannot be split), and then
none of it is recorded, so each batch of it still counts when it comes again on its own (an
agent sends again what no replica acknowledged). So nothing is counted twice; what may go
uncounted is a range that overlaps one counted before and whose other batches never come
again — see ``server/relay_spans.py`` for why that side is the safe one.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mission_control.resilience.v1 import control_plane_pb2 as pb

#: Sequence numbers remembered below a session's newest (a bit each).
WINDOW = 4096
MAX_SESSIONS = 65_536
IDLE_SECS = 900.0


@dataclass(frozen=True)
class BatchKey:
    """One agent's outcome batch."""

    agent_id: str
    session_id: str
    series: str
    sequence: int
    #: The first batch of a range a replica merged (0: the one batch ``sequence``).
    first: int = 0

    @property
    def lowest(self) -> int:
        """The first batch this key names."""
        return self.first if 0 < self.first < self.sequence else self.sequence


@dataclass
class _Session:
    newest: int
    #: bit i set: batch ``newest - i`` was counted
    seen: int
    used_at: float


class OutcomeLedger:
    """Remembers the batches counted, per agent session, in bounded memory."""

    def __init__(
        self,
        window: int = WINDOW,
        max_sessions: int = MAX_SESSIONS,
        idle_secs: float = IDLE_SECS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_sessions = max_sessions
        self.idle_secs = idle_secs
        self._clock = clock
        self._sessions: collections.OrderedDict[tuple[str, str, str], _Session] = collections.OrderedDict()
        #: Batches not counted: sent again / too far behind their session's newest.
        self.resent = 0
        self.too_old = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def first_time(self, key: BatchKey) -> bool:
        """Record ``key`` as counted; False when it was counted before (or is too old to
        tell). A sequence of 0 (a sender that does not number its batches) always counts."""
        if key.sequence <= 0:
            return True
        now = self._clock()
        self._forget_idle(now)
        name = (key.agent_id, key.session_id, key.series)
        session = self._sessions.pop(name, None)
        if session is None:
            width = min(key.sequence - key.lowest + 1, self.window)
            session = _Session(key.sequence, (1 << width) - 1, now)
            counted = True
        else:
            counted = self._mark(session, key.lowest, key.sequence)
            session.used_at = now
        self._sessions[name] = session  # the most recently used last
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return counted

    def _mark(self, session: _Session, first: int, last: int) -> bool:
        """Record batches ``first``..``last`` (one, or a range) as counted, all or none."""
        newest = max(session.newest, last)
        shift = newest - session.newest
        # a jump past the window leaves nothing of it: no shift (a hostile jump to 2**62
        # would build an integer that many bits long)
        seen = session.seen << shift if shift < self.window else 0
        low, high = newest - last, newest - first  # how far behind the newest
        if high >= self.window and first <= session.newest:
            self.too_old += 1  # part of it may have been counted and forgotten: cannot tell
            return False
        high = min(high, self.window - 1)  # (all of it above what was counted: new)
        mask = ((1 << (high - low + 1)) - 1) << low
        if seen & mask:
            self.resent += 1
            return False
        session.seen = (seen | mask) & ((1 << self.window) - 1)
        session.newest = newest
        return True

    def _forget_idle(self, now: float) -> None:
        while self._sessions:
            name, oldest = next(iter(self._sessions.items()))
            if now - oldest.used_at < self.idle_secs:
                return
            del self._sessions[name]


def batch_key(
    agent_id: str, session_id: str, series: str, batch: pb.OutcomeBatch, *, replica: bool
) -> BatchKey | None:
    """The name of ``batch`` sent by an agent whose hello said ``series``: the origin a
    replica passed it on for (only a replica may name another sender's batch), else the
    sender's own; None when the batch has no series or sequence (not de-duplicated)."""
    if replica and batch.HasField("origin"):
        return origin_key(batch.origin, batch.summaries)
    if not (batch.sequence and series):
        return None
    return BatchKey(agent_id, session_id, series, batch.sequence)


def origin_key(origin: pb.OutcomeOrigin, summaries: Sequence[pb.OutcomeSummary] = ()) -> BatchKey | None:
    """The batch (or range of batches, named on the ``summaries``) ``origin`` names (None:
    it names none)."""
    if not (origin.sequence and origin.series):
        return None
    firsts = [s.origin_first for s in summaries if 0 < s.origin_first < origin.sequence]
    return BatchKey(
        origin.agent_id, origin.session_id, origin.series, origin.sequence, min(firsts, default=0)
    )


def origin_of(key: BatchKey) -> pb.OutcomeOrigin:
    return pb.OutcomeOrigin(
        agent_id=key.agent_id, session_id=key.session_id, series=key.series, sequence=key.sequence
    )


def named(key: BatchKey, summaries: Sequence[pb.OutcomeSummary]) -> list[pb.OutcomeSummary]:
    """``summaries`` to pass on under ``key``: each says the range's first batch (copies)."""
    first = key.first if key.lowest < key.sequence else 0
    out = []
    for summary in summaries:
        copy = pb.OutcomeSummary()
        copy.CopyFrom(summary)
        # a batch its agent marked as sent again (``origin_first`` = its own sequence)
        # keeps the mark: a replica that takes it from this one keeps it apart too
        copy.origin_first = first or (key.sequence if summary.origin_first == key.sequence else 0)
        out.append(copy)
    return out
