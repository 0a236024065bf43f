"""What the sync and the asyncio write spools share: the receipt, and the decisions around
the journal on the callers' side (spool or raise, wait for the spool to drain) with the
counts; the replay's decisions are in :mod:`.spool_replay`. The spools differ only in their
I/O loop. A write's id and record format are in :mod:`.spool_writes`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ResourceExhausted
from .journal import Journal, JournalBroken, JournalFull
from .outcomes import DEFAULT, Outcomes, kind_of
from .spool_replay import ReplayCore, ReplayOutcome, WriteTarget, replay_outcome
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


class SpoolCore(ReplayCore):
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
        self._target = WriteTarget(service, function, kind or kind_of(service))
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

    def _new_write(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, bytes]:
        """A new write's id and its record (raises before any call when it cannot be kept)."""
        write_id = uuid.uuid4().hex
        return write_id, encode_write(write_id, self.function, args, kwargs)

    def _waits_for_drain(self) -> bool:
        """A new write waits for the replay to empty the spool (see :meth:`_joins_spool`)."""
        return bool(len(self.journal)) and self._parallel == 1 and self._open_for() <= 0

    def _joins_spool(self) -> bool:
        """A new write is spooled without a try: writes wait in the spool and the breaker is
        open, or their order is kept (``parallel`` 1: a later write never overtakes an
        earlier one). Writes replayed several at a time keep no order, so while the breaker
        lets calls through a new one is made at once beside the replay, neither held back
        for it nor queued behind it."""
        return bool(len(self.journal)) and (self._parallel == 1 or self._open_for() > 0)

    def _drain_over(self, failures: int, stopping: bool) -> bool:
        """A write waiting for the spool to drain goes on: it is empty, a replay failed
        since the wait began (``failures`` then), or the spool is stopping."""
        return not len(self.journal) or failures != self._replay_failures or stopping

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

    def held_writes(self) -> list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]:
        """The writes set aside because the function could not take their arguments
        (``held.log`` in the directory): (id, function that spooled it, args, kwargs)."""
        return [decode_write(record.payload) for record in self.journal.held()]


JOURNAL_REFUSALS = (JournalFull, JournalBroken)
