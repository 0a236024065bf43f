"""The replay side of a write spool, shared by the sync and the asyncio spools: which
step the replayer takes next, what one replay came to (made, dropped, held, or failed by the
service and tried again), marking the writes made done, and counting them. The spools'
loops only carry the steps out, each with its own waits and its own I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import CircuitBreakerOpen
from .journal import Journal, Record
from .outcomes import Counts, Outcomes, classify
from .spool_writes import decode_write

__all__ = [
    "LOOK_AGAIN_SECS",
    "SYNC_MARKS_EVERY",
    "ReplayCore",
    "ReplayOutcome",
    "ReplayStep",
    "WriteTarget",
    "replay_outcome",
]

_log = logging.getLogger("mission_control.client.spool")

#: Done marks written between two fsyncs of them while the spool drains: after a power
#: loss (not a kill: a written mark survives that) at most this many replayed writes are
#: made again.
SYNC_MARKS_EVERY = 32

#: The longest wait of a replayer between tries after a disk operation failed.
MAX_REPLAY_BACKOFF = 5.0

#: How soon the replayer looks again at a breaker that refuses its writes while the
#: service may already serve: an OPEN (a recovery check may end it long before its wait),
#: or a HALF_OPEN that has not given this agent a probe permit yet (asked for at the
#: refusal; the control plane answers within a round trip).
LOOK_AGAIN_SECS = 0.05

#: What one replay of a spooled write came to: "replayed" (made), "dropped" (it can never
#: be made), "held" (set aside in ``held.log``: the function now decorated cannot take its
#: arguments), "refused" (the breaker let no probe through yet, though it is not OPEN: tried
#: again soon, and not a failure of the service), or None: the service failed it, and it is
#: tried again later.
ReplayOutcome = Literal["replayed", "dropped", "held", "refused"] | None


def replay_outcome(error: Exception | None, service_failed: Callable[[Exception], bool]) -> ReplayOutcome:
    """The outcome of a replay that raised ``error`` (None: it returned)."""
    if error is None:
        return "replayed"
    if isinstance(error, TypeError):  # the arguments do not fit the function now decorated
        return "held"
    return None if service_failed(error) else "dropped"


@dataclass(slots=True)
class WriteTarget:
    """What a spooled write's errors are classified against (as a call's)."""

    service: str
    operation: str
    kind: str
    timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplayAfter:
    """What follows a replay: ``failed`` (the service failed a write: the writes waiting
    for the spool to drain stop waiting) and the ``pause`` before the next replay."""

    failed: bool
    pause: float


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """What the replayer does next: ``settle`` (mark done the writes made: before anything
    else, so none is made twice), ``idle`` (nothing waits: until woken), ``wait``
    ``seconds`` (the breaker is open), or ``make`` the writes of ``batch``."""

    action: Literal["settle", "idle", "wait", "make"]
    seconds: float = 0.0
    batch: tuple[Record, ...] = ()


class ReplayCore:
    """The replay decisions of :class:`~.spool_common.SpoolCore` (which holds the state)."""

    journal: Journal
    service: str
    function: str
    replayed: int
    dropped: int
    _open_for: Callable[[], float]
    _pause: float
    _count: Callable[[int, int, int, int], None]
    _outcomes: Outcomes
    _target: WriteTarget
    _parallel: int
    _made: dict[int, str]
    _marks_unsynced: int
    _stalled: str | None
    _renamed: set[str]

    def _next_step(self) -> ReplayStep:
        """The replayer's next step (see :class:`ReplayStep`)."""
        if self._unsettled():
            return ReplayStep("settle")
        batch = self._to_replay()
        if not batch:
            return ReplayStep("idle")
        wait = self._open_for()
        if wait > 0:
            return ReplayStep("wait", seconds=min(wait, LOOK_AGAIN_SECS))
        return ReplayStep("make", batch=tuple(batch))

    def _made_now(self, batch: Sequence[Record], outcomes: Sequence[ReplayOutcome]) -> ReplayAfter:
        """Note what the replays of ``batch`` came to, and what the replayer does next."""
        self._made.update((r.seq, o) for r, o in zip(batch, outcomes, strict=True) if o and o != "refused")
        if None in outcomes:
            return ReplayAfter(failed=True, pause=self._pause)
        return ReplayAfter(failed=False, pause=LOOK_AGAIN_SECS if "refused" in outcomes else 0.0)

    def _replay_error(self, backoff: float) -> float:
        """Log a replay step that failed (a disk operation: the replayer must outlive it;
        it tries again in ``backoff`` seconds); the wait after the next failure."""
        _log.exception("spool %s: replay failed; trying again in %.1fs", self.journal.directory, backoff)
        return min(backoff * 2, MAX_REPLAY_BACKOFF)

    def _service_failed(self, exc: BaseException) -> bool:
        return classify(self._target, exc, self._outcomes).counts is Counts.FAILURE

    def _to_replay(self) -> list[Record]:
        """The oldest waiting writes not made yet: one, or up to ``parallel``."""
        batch: list[Record] = []
        for record in self.journal.pending():
            if record.seq not in self._made:
                batch.append(record)
                if len(batch) >= self._parallel:
                    break
        return batch

    def _unsettled(self) -> bool:
        """The oldest waiting write was made (or dropped) but is not marked done yet."""
        first = self.journal.first()
        return first is not None and first.seq in self._made

    def _settle(self) -> list[str]:
        """Mark done (a blocking disk write) the writes made or dropped that no waiting
        write comes before; their outcomes. When the mark fails, hand out no receipts until
        it is written (the journal would make the writes again) and raise.

        The mark is written at once (a kill keeps it); :meth:`_sync_marks` fsyncs it."""
        last = None
        for record in self.journal.pending():
            if record.seq not in self._made:
                break
            last = record.seq
        if last is None:
            return []
        failing = f"write #{last} was made but could not be marked done"
        try:
            for record in self.journal.pending():
                if record.seq <= last and self._made[record.seq] == "held":
                    failing = f"write #{record.seq} could not be set aside as held"
                    self.journal.hold(record)
            failing = f"write #{last} was made but could not be marked done"
            self.journal.mark_done(last, sync=False)
        except OSError as exc:
            self._stalled = f"{failing} ({exc})"
            raise
        self._stalled = None
        outcomes = [self._made.pop(seq) for seq in sorted(self._made) if seq <= last]
        self._marks_unsynced += 1
        self.replayed += outcomes.count("replayed")
        self.dropped += outcomes.count("dropped")
        return outcomes

    def _sync_marks(self, *, unless_draining: bool = False) -> None:
        """fsync the done marks written so far (a blocking disk write). ``unless_draining``:
        not while the spool drains and fewer than :data:`SYNC_MARKS_EVERY` wait for it, so
        the replay does not pay an fsync per write.

        Raises:
            OSError: the fsync failed (tried again at the next call).
        """
        if unless_draining and len(self.journal) and self._marks_unsynced < SYNC_MARKS_EVERY:
            return
        if self._marks_unsynced:
            self.journal.sync_done()
            self._marks_unsynced = 0

    def _counted(self, outcomes: list[str]) -> None:
        if outcomes:
            self._count(0, outcomes.count("replayed"), outcomes.count("dropped"), outcomes.count("held"))

    def _to_make(self, record: Record) -> tuple[str, tuple[Any, ...], dict[str, Any]] | None:
        """The spooled write to replay (id, args, kwargs), or None when it cannot be read
        (logged; it is dropped). A write spooled under another function name (the function
        was renamed or moved) is made by the function now decorated: the directory is what
        names the spool."""
        try:
            write_id, function, args, kwargs = decode_write(record.payload)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # never stall the journal
            self._dropping(record.seq, f"it cannot be read ({exc})")
            return None
        if function != self.function and function not in self._renamed:
            self._renamed.add(function)
            _log.warning(
                "spool %s: writes spooled by %r are replayed by %r (same directory)",
                self.journal.directory, function, self.function,
            )  # fmt: skip
        return write_id, args, kwargs

    def _replayed(self, record: Record, error: Exception | None) -> ReplayOutcome:
        """The outcome of replaying ``record`` (see :func:`replay_outcome`), logged when the
        write is dropped or held. A refusal of a breaker that is not OPEN (a HALF_OPEN whose
        probe permit this agent was not given yet) is "refused": the service did not fail."""
        if isinstance(error, CircuitBreakerOpen) and self._open_for() <= 0:
            return "refused"
        outcome = replay_outcome(error, self._service_failed)
        if outcome == "dropped":
            self._dropping(record.seq, f"the write failed with the caller's error {error!r}")
        elif outcome == "held":
            self._holding(record, error)
        return outcome

    def _dropping(self, seq: int, why: str) -> None:
        """A write that can never be made is dropped, not retried for ever."""
        _log.error("spool %s: dropping write #%d: %s", self.journal.directory, seq, why)

    def _holding(self, record: Record, error: Exception | None) -> None:
        """A write the function now decorated cannot take (its arguments do not fit) is
        set aside in ``held.log`` (by :meth:`_settle`), not dropped and not retried for ever."""
        by = decode_write(record.payload)[1]
        _log.error(
            "spool %s: write #%d (spooled by %r) cannot be made by %r: %r; it is kept in %s, not made",
            self.journal.directory, record.seq, by, self.function, error, self.journal.directory / "held.log",
        )  # fmt: skip
