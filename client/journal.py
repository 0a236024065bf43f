"""An append-only, fsync'd, bounded journal on local disk: what a write spool keeps.

Layout of the directory (the formats in client/journal_format.py):

* ``segment-<first seq>.log``: records ``magic | length | crc32 | seq | payload``, the
  CRC over ``seq | payload``; a new segment starts when the current one passes its size
  (client/journal_segments.py).
* ``done.log``: every record up to its mark was handled (client/journal_done.py). Records
  are handled in order, so the highest good mark says everything.
* ``held.log`` and ``held-<seq>.log``: records handled by being set aside, not made: kept
  for the operator (client/journal_held.py), never deleted by the journal.
* ``lost.log``: the lost records counted already (client/journal_lost.py).

The directory itself is locked (``flock``) while a process has the journal open: one
writer only. Within the process, the journal is the one owner of its open segment and its
list of segments: appends, marks, their fsyncs and the deletion of done segments take its
lock, so a thread marking records done never closes or deletes the segment another thread
is appending to. Reading what is pending takes no lock (a list swapped whole, never cut in
place), so an event loop may ask while the I/O thread fsyncs.

Every append is fsync'd before it returns; a done mark is written before it returns and
fsync'd then or, for marks made one after another, by :meth:`Journal.sync_done`. A process
killed in the middle of a write (``kill -9``, power loss) leaves a torn last record: opening
the journal drops it (the file is cut at the last whole record) and never fails on it
(client/journal_open.py). A record in the middle that fails its checks is skipped, counted
(:attr:`Journal.corrupt`) and logged; the records after it are kept.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from .journal_done import DoneLog
from .journal_format import (
    LAST_SEQ,
    MAX_RECORD,
    JournalBroken,
    JournalFull,
    JournalLocked,
    Record,
    open_directory,
)
from .journal_format import done_mark as _done_mark  # noqa: F401  (its name here before the split)
from .journal_format import encode as _encode
from .journal_held import HeldRecords
from .journal_open import count_corrupt, read_segments
from .journal_read import read_records as _read_records
from .journal_segments import Segments

__all__ = ["MAX_RECORD", "Journal", "JournalBroken", "JournalFull", "JournalLocked", "Record"]

_log = logging.getLogger("mission_control.client.spool")


class Journal:
    """The records of one spool directory not yet marked done, in order.

    Args:
        directory: created if missing; one process at a time (else :class:`JournalLocked`).
        max_records / max_bytes: the bound on records kept and not done; an append
            beyond it raises :class:`JournalFull`.
        segment_bytes: size after which appends go to a new segment file (done segments
            are deleted whole).
        read: read the files now; else the directory is only locked, and :meth:`read`
            (on another thread, say) reads them: every other method waits for it.
    """

    def __init__(
        self, directory: str | Path, *, max_records: int = 10_000, max_bytes: int = 64 * 1024 * 1024,
        segment_bytes: int = 1024 * 1024, read: bool = True,
    ) -> None:  # fmt: skip
        self.directory = Path(directory)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        # Swapped whole by mark_done (never cut in place): readers take no lock.
        self._pending: list[Record] = []
        # Held by every method that writes, closes or deletes a file, or changes the lists.
        self._mutex = threading.RLock()
        self._segments = Segments(self.directory, segment_bytes)
        #: Records not done that could not be read when the journal was opened (skipped),
        #: and were not counted at an earlier opening.
        self.corrupt = 0
        self._held = HeldRecords(self.directory)
        self._marks = DoneLog(self.directory)
        self.next_seq = 1  # read from the files by read()
        #: Why the journal no longer keeps records (None: it does).
        self.broken: str | None = None
        self._read = threading.Event()  # the files were read (see :meth:`read`)
        self._lock_fd, self.broken = open_directory(self.directory)
        if read:
            self.read()

    # -- opening -------------------------------------------------------------------

    def read(self) -> None:
        """Read the directory's records and done marks (once; the constructor does it
        unless told not to). Files that cannot be read, or that contradict each other,
        leave the journal :attr:`broken` (logged; nothing is deleted or replayed, and it
        keeps no new record) rather than raising."""
        if self._read.is_set():
            return
        if self._lock_fd < 0:  # not ours: not read
            self._read.set()
            return
        try:
            self._recover()
        except (OSError, JournalBroken) as exc:
            self._pending, self._segments.files, self._marks.seq, self.next_seq = [], [], 0, 1
            self.broken = f"its files could not be read ({exc}); they are left as they are"
            _log.error("journal %s: %s", self.directory, self.broken)
        finally:
            self._read.set()

    def wait_read(self) -> None:
        """Wait until the files are read (see :meth:`read`)."""
        self._read.wait()

    @property
    def done(self) -> int:
        """Every record up to this seq was handled (0: none)."""
        return self._marks.seq

    @property
    def unsynced(self) -> bool:
        """Done marks were written but not fsync'd yet (see :meth:`mark_done`)."""
        return self._marks.unsynced

    def _recover(self) -> None:
        done = self._marks.read()
        # this module's name for the reader, looked up at each open (tests replace it)
        found = read_segments(self.directory, done, _read_records)
        self._pending, self._segments.files, self.next_seq = found.pending, found.segments, found.next_seq
        self._marks.settle()
        self.corrupt = count_corrupt(self.directory, done, found)
        self._segments.forget_done(self.done)

    # -- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        self.wait_read()
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        self.wait_read()
        return sum(len(r.payload) for r in self._pending)

    def first(self) -> Record | None:
        """The oldest record not done, if any."""
        self.wait_read()
        pending = self._pending
        return pending[0] if pending else None

    def pending(self) -> Iterator[Record]:
        self.wait_read()
        return iter(list(self._pending))

    # -- writing -------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Keep ``payload`` durably (fsync'd when this returns); returns its seq.

        Raises:
            JournalFull: the bound is reached, or the disk is full; nothing was kept.
            JournalBroken: the record could not be written; nothing was kept.
        """
        self.wait_read()
        with self._mutex:
            return self._append(payload)

    def _append(self, payload: bytes) -> int:
        if len(self._pending) >= self.max_records or self.pending_bytes + len(payload) > self.max_bytes:
            raise JournalFull(
                f"spool {self.directory} is full ({len(self._pending)} writes, {self.pending_bytes} bytes)"
            )
        if len(payload) > MAX_RECORD:
            raise JournalFull(f"a write of {len(payload)} bytes is larger than a spool record may be")
        seq = self.next_seq
        if seq >= LAST_SEQ:
            raise JournalFull(f"spool {self.directory} has numbered the most records a journal may")
        self._write_record(seq, _encode(seq, payload))
        self.next_seq = seq + 1
        self._pending.append(Record(seq, payload))
        return seq

    def _write_record(self, seq: int, record: bytes) -> None:
        """Write and fsync ``record`` whole, or leave the segment as it was and raise."""
        if self.broken:
            raise JournalBroken(f"spool {self.directory} is broken: {self.broken}")
        try:
            self._segments.write(seq, record)
        finally:
            self.broken = self.broken or self._segments.broken

    def hold(self, record: Record) -> bool:
        """Set ``record`` aside (fsync'd when this returns; on a full disk, in place: see
        client/journal_held.py); mark it done after this. Returns False when it already
        was (a crash between holding it and its done mark): it is held once.

        Raises:
            OSError: it could not be kept; the files are as they were (try again).
        """
        with self._mutex:
            self._check_open()
            return self._held.hold(self._segments.files, record)

    def held(self) -> list[Record]:
        """The records set aside by :meth:`hold`, in order, each once (read from the
        files: a held record whose file was deleted since is logged, and no longer held).

        Raises:
            OSError: the held records could not be read.
        """
        return self._held.read()

    @property
    def held_count(self) -> int:
        """Records held, as last read by :meth:`held` and kept by :meth:`hold`."""
        return len(self._held.seqs)

    def mark_done(self, seq: int, *, sync: bool = True) -> None:
        """Every record up to ``seq`` is handled. The mark is written to the file before
        this returns, so a process killed after it (``kill -9``) keeps it; with ``sync``
        it is also fsync'd (a power loss keeps it), else :meth:`sync_done` (or a later
        synced mark) fsyncs it: marks made one after another share one fsync.

        Raises:
            OSError: the mark could not be written; nothing changed (try again).
        """
        self.wait_read()
        with self._mutex:
            self._check_open()
            if self._marks.write(seq, sync):
                self._pending = [record for record in self._pending if record.seq > seq]
                if sync:
                    self._synced()

    def sync_done(self) -> None:
        """fsync the done marks written without it (a no-op when there are none).

        Raises:
            OSError: the fsync failed (the marks stay unsynced; try again).
        """
        with self._mutex:
            if self._marks.sync():
                self._synced()

    def _synced(self) -> None:
        """The marks are on disk: segments all done can go; when every record is done,
        the one being appended too, so an empty spool gives its disk space back."""
        if not self._pending:
            self._segments.close()
        self._segments.forget_done(self.done)

    def _check_open(self) -> None:
        if self._lock_fd < 0:
            raise JournalBroken(f"spool {self.directory} is broken: {self.broken}")

    def close(self) -> None:
        """Sync the marks and unlock the directory. The journal writes nothing after
        this (another process may own the directory now): appends, marks and holds raise
        :class:`JournalBroken`, and :attr:`broken` says it is closed."""
        with self._mutex:
            if self._lock_fd < 0:
                return
            try:
                self.sync_done()
            except OSError:  # a mark not synced is made again after a power loss, not lost
                _log.exception("journal %s: the done marks could not be synced", self.directory)
            self._segments.close()
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
            self.broken = "it was closed (its directory may belong to another process now)"
