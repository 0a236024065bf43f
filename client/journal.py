"""An append-only, fsync'd, bounded journal on local disk: what a write spool keeps.

Layout of the directory:

* ``segment-<first seq>.log``: records ``magic | length | crc32 | seq | payload``, the
  CRC over ``seq | payload``; a new segment starts when the current one passes its size.
* ``done.log``: two slots of ``magic | seq | crc32``: every record up to ``seq`` was
  handled. Records are handled in order, so the highest good mark says everything. The
  file is written whole when the journal opens and marks are then written in place, so
  marking a record done never needs more disk space: a spool that filled its disk can
  still mark its replayed records done and free their segments. A mark is written to the
  slot that does not hold the last fsync'd mark, so a torn write never loses that one.
* ``held.log``: records (the segments' format) that were handled by being set aside, not
  made: kept for the operator (see :meth:`Journal.hold`), never deleted by the journal.
* ``held-<seq>.log``: a held record that ``held.log`` had no disk space for (a full
  disk): a second name (hard link) of the segment that holds it, so holding needs no new
  space; only record ``seq`` of it is held.
The directory itself is locked (``flock``) while a process has the journal open: one
writer only. Within the process, the journal is the one owner of its open segment and its
list of segments: appends, marks, their fsyncs and the deletion of done segments take its
lock, so a thread marking records done never closes or deletes the segment another thread
is appending to. Reading what is pending takes no lock (a list swapped whole, never cut in
place), so an event loop may ask while the I/O thread fsyncs.

Every append is fsync'd before it returns; a done mark is written before it returns and
fsync'd then or, for marks made one after another, by :meth:`Journal.sync_done`. A process killed in the
middle of a write (``kill -9``, power loss) leaves a torn last record: opening the journal
drops it (the file is cut at the last whole record) and never fails on it. A record in
the middle that fails its checks is skipped, counted (:attr:`Journal.corrupt`) and logged;
the records after it are kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Journal", "JournalBroken", "JournalFull", "JournalLocked"]

_log = logging.getLogger("mission_control.client.spool")

_RECORD = struct.Struct("<4sIIQ")  # magic, payload length, crc32(seq + payload), seq
_RECORD_MAGIC = b"MCS1"
_DONE = struct.Struct("<4sQI")  # magic, seq, crc32(seq)
_DONE_MAGIC = b"MCD1"
_SEQ = struct.Struct("<Q")
#: No journal writes this many records; a done mark beyond it is corrupt.
_LAST_SEQ = 2**63
#: A record longer than this is not one of ours (a corrupt length field).
MAX_RECORD = 16 * 1024 * 1024


class JournalFull(Exception):
    """The journal holds its bound of records or bytes: the record was not kept."""


class JournalBroken(Exception):
    """The journal's files cannot hold a record now (a failed or short write, a deleted
    directory): the record was not kept."""


class JournalLocked(Exception):
    """Another process has the journal open."""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    payload: bytes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(seq: int, payload: bytes) -> bytes:
    return _RECORD.pack(_RECORD_MAGIC, len(payload), zlib.crc32(_SEQ.pack(seq) + payload), seq) + payload


def _record_at(data: bytes, at: int) -> tuple[Record, int] | None:
    """The whole, checksummed record at ``at`` and where it ends, else None."""
    if at + _RECORD.size > len(data):
        return None
    magic, length, crc, seq = _RECORD.unpack_from(data, at)
    end = at + _RECORD.size + length
    if magic != _RECORD_MAGIC or length > MAX_RECORD or end > len(data):
        return None
    payload = data[at + _RECORD.size : end]
    if zlib.crc32(_SEQ.pack(seq) + payload) != crc:
        return None
    return Record(seq, payload), end


def _read_records(path: Path) -> tuple[list[Record], int]:
    """The whole records of a segment, and the offset where the last one ends. A bad
    record in the middle is skipped (the next good one is found by its magic and checksum);
    bytes after the last good record are a torn tail."""
    data = path.read_bytes()
    records: list[Record] = []
    at = good_end = 0
    while at < len(data):
        found = _record_at(data, at)
        if found is None:
            at = data.find(_RECORD_MAGIC, at + 1)
            if at < 0:
                break
            continue
        record, at = found
        if not records or record.seq > records[-1].seq:
            records.append(record)
        good_end = at
    return records, good_end


def _read_done(path: Path) -> tuple[int, bytes]:
    """The last seq marked done (0: none): the highest good mark of the file (older
    versions appended marks; a bad or torn one is skipped), and the file's bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, b""
    done = 0
    for at in range(0, len(data) - _DONE.size + 1, _DONE.size):
        magic, seq, crc = _DONE.unpack_from(data, at)
        if magic == _DONE_MAGIC and zlib.crc32(_SEQ.pack(seq)) == crc:
            done = max(done, seq)
    return done, data


def _done_mark(seq: int) -> bytes:
    return _DONE.pack(_DONE_MAGIC, seq, zlib.crc32(_SEQ.pack(seq)))


def _held_seq(name: str) -> int | None:
    """The seq a ``held-<seq>.log`` file holds (None: not such a name)."""
    digits = name.removeprefix("held-").removesuffix(".log")
    return int(digits) if len(digits) == 20 and digits.isdigit() else None


def _cut(path: Path, size: int) -> None:
    """Drop a torn tail, durably, before anything is appended after it."""
    if path.exists() and path.stat().st_size > size:
        _log.warning("journal %s: dropping %d bytes of a torn record", path, path.stat().st_size - size)
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())


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
        self.directory.mkdir(parents=True, exist_ok=True)
        # The lock is on the directory itself: a lock file could be deleted while held,
        # and the next process would lock a new file of the same name.
        self._lock_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalLocked(f"spool {self.directory} is open in another process") from None
        # Swapped whole by mark_done (never cut in place): readers take no lock.
        self._pending: list[Record] = []
        # Held by every method that writes, closes or deletes a file, or changes the lists.
        self._mutex = threading.RLock()
        self._segments: list[tuple[Path, int]] = []  # (file, last seq in it)
        #: Records not done that could not be read when the journal was opened (skipped).
        self.corrupt = 0
        self._fd: int | None = None
        self.done, self.next_seq = 0, 1  # read from the files by read()
        self._done_slot, self._done_ready = 0, False
        #: Done marks written but not fsync'd yet (see :meth:`mark_done`).
        self.unsynced = False
        #: Why the journal no longer keeps records (None: it does).
        self.broken: str | None = None
        self._read = threading.Event()  # the files were read (see :meth:`read`)
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
        try:
            self._recover()
        except (OSError, JournalBroken) as exc:
            self._pending, self._segments, self.done, self.next_seq = [], [], 0, 1
            self.broken = f"its files could not be read ({exc}); they are left as they are"
            _log.error("journal %s: %s", self.directory, self.broken)
        finally:
            self._read.set()

    def wait_read(self) -> None:
        """Wait until the files are read (see :meth:`read`)."""
        self._read.wait()

    def _recover(self) -> None:
        self.done, data = _read_done(self.directory / "done.log")
        self.next_seq = self.done + 1
        for path in self._segment_files():
            records, end = _read_records(path)
            _cut(path, end)
            if not records:
                path.unlink()
                continue
            self._segments.append((path, records[-1].seq))
            self.next_seq = max(self.next_seq, records[-1].seq + 1)
            after = self._pending[-1].seq if self._pending else self.done
            self._pending.extend(r for r in records if r.seq > after)
            if records[0].seq <= after and records[-1].seq > self.done:
                _log.error(
                    "journal %s: %s repeats records of an earlier segment; read once",
                    self.directory,
                    path.name,
                )
        self._check_done_mark()
        self._done_slot = 0  # the slot holding the last fsync'd mark
        self._done_ready = data == _done_mark(self.done) * 2
        if not self._done_ready:
            with contextlib.suppress(OSError):
                self._lay_out_done()
        self._count_corrupt()
        self._forget_done_segments()

    def _segment_files(self) -> list[Path]:
        """The segments, oldest first; another file named like one (a copy) is left alone."""
        segments = []
        for path in sorted(self.directory.glob("segment-*.log")):
            digits = path.name.removeprefix("segment-").removesuffix(".log")
            if len(digits) == 20 and digits.isdigit():
                segments.append(path)
            else:
                _log.error(
                    "journal %s: %s is not a segment's name; not read, left as it is",
                    self.directory,
                    path.name,
                )
        return segments

    def _check_done_mark(self) -> None:
        """A done mark past every record kept (a segment is deleted only once all its
        records are done, and never before a newer one) was not written by the journal:
        trusting it would drop the records silently.

        Raises:
            JournalBroken: the mark is past the records, or past any seq ever written.
        """
        newest = self._segments[-1][1] if self._segments else None
        if self.done >= _LAST_SEQ or (newest is not None and self.done > newest):
            raise JournalBroken(
                f"done.log marks #{self.done} done, but the newest record kept is #{newest or 0}"
            )

    def _lay_out_done(self) -> None:
        """Write ``done.log`` whole (both slots hold the done mark), so marks never need
        more space. On a full disk this fails for a new file: logged, and tried again at
        the next mark (the one time a mark may need space)."""
        try:
            fd = os.open(self.directory / "done.log", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, _done_mark(self.done) * 2, 0)  # over the old marks: max is kept
                os.fsync(fd)
                os.ftruncate(fd, 2 * _DONE.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.directory)
        except OSError as exc:
            _log.warning("journal %s: the done marks' file could not be laid out (%s)", self.directory, exc)
            raise
        self._done_slot, self._done_ready = 0, True

    def _count_corrupt(self) -> None:
        """Seqs missing between the done mark and the records read were in records that
        failed their checks: counted, and logged (the records after them are kept)."""
        last = self.done
        for record in self._pending:  # in increasing seq order: never a negative count
            self.corrupt += record.seq - last - 1
            last = record.seq
        if self.corrupt:
            _log.error("journal %s: %d corrupt records skipped", self.directory, self.corrupt)

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
        self._write_record(seq, _encode(seq, payload))
        self.next_seq = seq + 1
        self._pending.append(Record(seq, payload))
        path, _ = self._segments[-1]
        self._segments[-1] = (path, seq)
        return seq

    def _write_record(self, seq: int, record: bytes) -> None:
        """Write and fsync ``record`` whole, or leave the segment as it was and raise."""
        if self.broken:
            raise JournalBroken(f"spool {self.directory} is broken: {self.broken}")
        try:
            fd = self._segment_for(seq)
            start = os.fstat(fd).st_size
        except OSError as exc:
            raise self._refusal(exc) from exc
        try:
            written = 0
            while written < len(record):  # a short write (a full disk) is followed by an error
                written += os.write(fd, record[written:])
            os.fsync(fd)
            if os.fstat(fd).st_nlink == 0:
                self.broken = f"its segment {self._segments[-1][0].name} was deleted"
                raise JournalBroken(f"spool {self.directory} is broken: {self.broken}")
        except OSError as exc:
            self._roll_back(fd, start)
            raise self._refusal(exc) from exc

    def _roll_back(self, fd: int, start: int) -> None:
        """Cut a failed record off, so that the next one follows the last whole one."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            # Records appended after a torn one would be cut with it when the journal is opened.
            self.broken = f"a torn record could not be removed ({exc})"

    def _refusal(self, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return JournalFull(f"spool {self.directory}: the disk is full ({exc.strerror})")
        return JournalBroken(f"spool {self.directory}: the record could not be written ({exc})")

    def _segment_for(self, seq: int) -> int:
        if self._fd is not None and os.fstat(self._fd).st_size < self.segment_bytes:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self.directory / f"segment-{seq:020d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if not self._segments or self._segments[-1][0] != path:
            self._segments.append((path, seq - 1))
        self._fd = fd
        _fsync_dir(self.directory)  # the new file's name survives a crash
        return fd

    def hold(self, record: Record) -> None:
        """Set ``record`` aside in ``held.log`` (fsync'd when this returns); mark it done
        after this. A record held twice (a crash between the two) is read back once. On a
        full disk it is held in place: its segment gets a second name, ``held-<seq>.log``,
        which needs no data space and keeps the record when the segment is deleted.

        Raises:
            OSError: it could not be kept; the files are as they were (try again).
        """
        with self._mutex:
            try:
                self._hold_in_log(record)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                self._hold_in_place(record)

    def _hold_in_place(self, record: Record) -> None:
        segment = next((path for path, last in self._segments if last >= record.seq), None)
        if segment is None:
            raise OSError(errno.ENOENT, f"no segment holds record #{record.seq}")
        link = self.directory / f"held-{record.seq:020d}.log"
        if not link.exists():
            os.link(segment, link)
            _fsync_dir(self.directory)
        _log.warning(
            "journal %s: held.log is out of disk space; record #%d is held in %s",
            self.directory,
            record.seq,
            link.name,
        )

    def _hold_in_log(self, record: Record) -> None:
        fd = os.open(self.directory / "held.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                data = _encode(record.seq, record.payload)
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def held(self) -> list[Record]:
        """The records set aside by :meth:`hold`, in order, each once."""
        path = self.directory / "held.log"
        held = {r.seq: r for r in (_read_records(path)[0] if path.exists() else [])}
        for link in self.directory.glob("held-*.log"):
            seq = _held_seq(link.name)
            if seq is not None:
                held.update((r.seq, r) for r in _read_records(link)[0] if r.seq == seq)
        return [held[seq] for seq in sorted(held)]

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
            self._mark_done(seq, sync)

    def _mark_done(self, seq: int, sync: bool) -> None:
        if seq <= self.done:
            return
        if not (self.directory / "done.log").exists():  # deleted from under the journal
            self._done_ready = False
        if not self._done_ready:
            self._lay_out_done()  # OSError: not marked
        slot = 1 - self._done_slot  # never over the last fsync'd mark
        fd = os.open(self.directory / "done.log", os.O_WRONLY)  # OSError: not marked
        try:
            if os.pwrite(fd, _done_mark(seq), slot * _DONE.size) != _DONE.size:
                raise OSError(errno.EIO, "short write of a done mark")
            if sync:
                os.fsync(fd)
                self._done_slot = slot
        finally:
            os.close(fd)
        self.done = seq
        self.unsynced = not sync
        self._pending = [record for record in self._pending if record.seq > seq]
        if sync:
            self._synced()

    def sync_done(self) -> None:
        """fsync the done marks written without it (a no-op when there are none).

        Raises:
            OSError: the fsync failed (the marks stay unsynced; try again).
        """
        with self._mutex:
            if not self.unsynced:
                return
            fd = os.open(self.directory / "done.log", os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._done_slot = 1 - self._done_slot
            self.unsynced = False
            self._synced()

    def _synced(self) -> None:
        """The marks are on disk: segments all done can go; when every record is done,
        the one being appended too, so an empty spool gives its disk space back."""
        if not self._pending and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._forget_done_segments()

    def _forget_done_segments(self) -> None:
        """Delete segments every record of which is done (never the one being appended)."""
        current = self._segments[-1][0] if self._segments and getattr(self, "_fd", None) else None
        keep = []
        for path, last in self._segments:
            if last <= self.done and path != current:
                path.unlink(missing_ok=True)
            else:
                keep.append((path, last))
        self._segments = keep

    def close(self) -> None:
        with self._mutex:
            try:
                self.sync_done()
            except OSError:  # a mark not synced is made again after a power loss, not lost
                _log.exception("journal %s: the done marks could not be synced", self.directory)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1
