"""What the sync and the asyncio write spools share: the receipt, and the decisions around
the journal (spool or raise, replay, hold or drop) with the counts. The spools differ only
in their I/O loop. A write's id and record format are in :mod:`.spool_writes`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ResourceExhausted
from .journal import Journal, JournalBroken, JournalFull, Record
from .outcomes import DEFAULT, Counts, Outcomes, classify, kind_of
from .spool_writes import (
    WRITE_ID_HEADER,
    current_write_id,
    decode_write,
    encode_write,
    write_id_metadata,
    writing,
)
from .write_attempts import WriteAttempts

__all__ = [
    "WRITE_ID_HEADER",
    "ReplayOutcome",
    "SpoolCore",
    "Spooled",
    "current_write_id",
    "decode_write",
    "encode_write",
    "replay_outcome",
    "write_id_metadata",
    "writing",
]

_log = logging.getLogger("mission_control.client.spool")

#: Done marks written between two fsyncs of them while the spool drains: after a power
#: loss (not a kill: a written mark survives that) at most this many replayed writes are
#: made again.
SYNC_MARKS_EVERY = 32

#: The longest wait of a replayer between tries after a disk operation failed.
MAX_REPLAY_BACKOFF = 5.0

NOT_SPOOLED_NOTE = (
    "not spooled: an attempt may have reached the service (it timed out or failed after "
    "sending), and a replay could make the write twice; mark the guard idempotent to spool "
    "such writes"
)


@dataclass(frozen=True, slots=True)
class Spooled:
    """A write kept in the spool instead of made now; it will be made, in order.

    Attributes:
        write_id: the write's id (see :func:`current_write_id`).
        seq: its place in the spool.
        reason: why it was not made now.
    """

    write_id: str
    seq: int
    reason: str


#: What one replay of a spooled write came to: "replayed" (made), "dropped" (it can never
#: be made), "held" (set aside in ``held.log``: the function now decorated cannot take its
#: arguments), or None: the service failed it, and it is tried again later.
ReplayOutcome = Literal["replayed", "dropped", "held"] | None


def replay_outcome(error: Exception | None, service_failed: Callable[[Exception], bool]) -> ReplayOutcome:
    """The outcome of a replay that raised ``error`` (None: it returned)."""
    if error is None:
        return "replayed"
    if isinstance(error, TypeError):  # the arguments do not fit the function now decorated
        return "held"
    return None if service_failed(error) else "dropped"


@dataclass(slots=True)
class _Target:
    service: str
    operation: str
    kind: str
    timeout: float = 0.0


class SpoolCore:
    """The journal of one protected write function, its counts and the decisions around it.

    Args:
        directory: the spool's directory (one function, one process at a time).
        service / function: the service written to, and the function's name (kept with
            each write; any function decorated on the directory replays its writes, also
            those spooled under another name: a renamed or moved function, or a directory
            shared by mistake with another function — logged once per other name).
        open_for: seconds the service's breaker stays open (0: calls may go).
        count: ``count(spooled, replayed, dropped, held)`` adds to the service's counts.
        outcomes: how the write's exceptions count (a failure of the service is spooled).
        idempotent: a write may be made twice: spool it even when an attempt may have
            reached the service (see :mod:`.write_attempts`).
        drain_wait: how long a new write may wait for the replayer to empty the spool
            while the service serves (the policy's timeout), before it is spooled.
        parallel: writes replayed at once. 1 (the default) makes them one after another,
            in order; more is for writes whose order does not matter to the upstream: up
            to that many are in flight, and a process killed while they are may make each
            of them again (see the spool's guarantee).
        read_later: only lock the directory now; :meth:`_read_journal` reads it (the
            asyncio spool does that on its I/O thread).
    """

    def __init__(
        self, directory: str | Path, *, service: str, function: str, open_for: Callable[[], float],
        count: Callable[[int, int, int, int], None], outcomes: Outcomes | None = None,
        kind: str | None = None, max_writes: int = 10_000, max_bytes: int = 64 * 1024 * 1024,
        pause: float = 0.2, idempotent: bool = False, drain_wait: Callable[[], float] = lambda: 0.0,
        parallel: int = 1, read_later: bool = False,
    ) -> None:  # fmt: skip
        if parallel < 1:
            raise ValueError(f"spool_replay_parallel must be 1 or more, not {parallel}")
        self.journal = Journal(directory, max_records=max_writes, max_bytes=max_bytes, read=not read_later)
        self.service = service
        self.function = function
        self._open_for = open_for
        self._count = count
        self._outcomes = outcomes or DEFAULT
        self._target = _Target(service, function, kind or kind_of(service))
        self._pause = pause
        self._idempotent = idempotent
        self._drain_wait = drain_wait
        self._replay_failures = 0
        self.spooled = self.replayed = self.dropped = 0
        self._parallel = parallel
        self._made: dict[int, str] = {}  # seq -> "replayed" / "dropped" / "held", not marked done yet
        self._marks_unsynced = 0
        self._stalled: str | None = None
        self._renamed: set[str] = set()
        if not read_later:
            self._read_journal()

    def _read_journal(self) -> None:
        """Read the journal's files (a blocking disk read) and count what they say."""
        self.journal.read()
        if self.journal.corrupt:  # kept, then lost on disk: they will never be made
            self.dropped += self.journal.corrupt
            self._count(0, 0, self.journal.corrupt, 0)
        try:
            self.journal.held()
        except OSError as exc:  # the held writes stay where they are; the spool goes on
            _log.error("spool %s: the held writes could not be read (%s)", self.journal.directory, exc)
        if self.held:
            _log.error(
                "spool %s: %d writes are held in held.log, not made", self.journal.directory, self.held
            )

    def __len__(self) -> int:
        """Writes waiting in the spool."""
        return len(self.journal)

    @property
    def held(self) -> int:
        """Writes set aside in the directory (see :meth:`held_writes`), by this process or
        earlier ones, each once."""
        return self.journal.held_count

    @property
    def broken(self) -> str | None:
        """Why the spool hands out no receipts now (None: it does): its journal cannot keep
        records, or a done mark could not be written (the replayer tries it again)."""
        return self._stalled or self.journal.broken

    def _service_failed(self, exc: BaseException) -> bool:
        return classify(self._target, exc, self._outcomes).counts is Counts.FAILURE

    def _spools(self, exc: Exception, attempts: WriteAttempts) -> bool:
        """Whether a write that failed with ``exc`` is spooled; else the caller gets ``exc``
        (with a note why, when an attempt may have reached the service)."""
        if not self._service_failed(exc):
            return False
        if attempts.maybe_applied and not self._idempotent:
            exc.add_note(NOT_SPOOLED_NOTE)
            return False
        return True

    def _append(self, payload: bytes) -> int:
        """Keep ``payload`` (fsync'd); raises JournalFull / JournalBroken."""
        if self.broken:
            raise self._broken_error()
        return self.journal.append(payload)

    def _broken_error(self) -> JournalBroken:
        return JournalBroken(f"spool {self.journal.directory} is broken: {self.broken}")

    def _kept(self, write_id: str, seq: int, reason: str) -> Spooled:
        self.spooled += 1
        self._count(1, 0, 0, 0)
        return Spooled(write_id, seq, reason)

    def _refused(self, full: Exception, reason: str) -> ResourceExhausted:
        """The caller's error for a write the journal could not keep (counted dropped).
        Not the service's error: a StorageFailure would tell the user the data is safe."""
        self.dropped += 1
        self._count(0, 0, 1, 0)
        refused = ResourceExhausted(
            f"{self.service} write spool", len(self.journal), self.journal.max_records
        )
        refused.add_note(f"not spooled: {full}; the write was not made ({reason})")
        return refused

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
        write is dropped or held."""
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

    def held_writes(self) -> list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]:
        """The writes set aside because the function could not take their arguments
        (``held.log`` in the directory): (id, function that spooled it, args, kwargs)."""
        return [decode_write(record.payload) for record in self.journal.held()]


JOURNAL_REFUSALS = (JournalFull, JournalBroken)
