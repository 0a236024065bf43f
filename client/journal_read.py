"""Reading the journal's files (formats in client/journal_format.py) without trusting them:
each is opened only if it is a regular file (never through a symbolic link, never a FIFO:
:func:`~.journal_format.open_regular`) and read in bounded chunks, so a huge file of
garbage costs a chunk of memory, not its size. A record that fails its checks is skipped.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .journal_format import (
    DONE,
    HEADER,
    LAST_SEQ,
    RECORD_MAGIC,
    Record,
    open_regular,
    read_done_marks,
    read_header,
    seq_checksum,
)

_log = logging.getLogger("mission_control.client.spool")

#: Bytes read at a time (a record longer than this is read whole, up to MAX_RECORD).
CHUNK = 1024 * 1024


class _Stream:
    """A window on a file read forward in chunks: bytes are kept from the oldest offset
    still wanted (:meth:`forget` moves it) to what was read last."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._buf = bytearray()
        self._base = 0  # the file offset of _buf[0]
        self.eof = False

    def _more(self, at_least: int = CHUNK) -> None:
        data = self._file.read(max(CHUNK, at_least))
        if data:
            self._buf += data
        else:
            self.eof = True

    def _fill(self, end: int) -> bool:
        """Read up to ``end``; False when the file ends before it."""
        while self._base + len(self._buf) < end and not self.eof:
            self._more(end - self._base - len(self._buf))
        return self._base + len(self._buf) >= end

    def get(self, start: int, end: int) -> bytes | None:
        """The bytes [start, end) of the file, or None when it ends before ``end``."""
        return bytes(self._buf[start - self._base : end - self._base]) if self._fill(end) else None

    def crc(self, start: int, end: int, running: int) -> int | None:
        """crc32 of the bytes [start, end) from ``running`` (not copied), or None when the
        file ends before ``end``."""
        if not self._fill(end):
            return None
        window = memoryview(self._buf)[start - self._base : end - self._base]
        try:
            return zlib.crc32(window, running)
        finally:
            window.release()  # else the buffer could not be cut by forget()

    def find(self, needle: bytes, start: int) -> int:
        """The offset of the first ``needle`` at or after ``start``, or -1."""
        while True:
            found = self._buf.find(needle, max(start - self._base, 0))
            if found >= 0:
                return self._base + found
            if self.eof:
                return -1
            self.forget(max(start, self._base + len(self._buf) - len(needle) + 1))
            self._more()

    def forget(self, offset: int) -> None:
        """Bytes before ``offset`` are not wanted again (dropped a chunk at a time)."""
        drop = offset - self._base
        if drop >= CHUNK or drop >= len(self._buf) > 0:
            del self._buf[:drop]
            self._base = offset


#: Bytes checksummed for candidate records that fail, per byte of a segment: past it the
#: rest of the segment is not read (see :func:`read_records`). A candidate is never longer
#: than the segment, so a segment with a few damaged records never comes near it.
RESYNC_WORK = 4


@dataclass(frozen=True)
class SegmentRead:
    """What :func:`read_records` found in a segment."""

    #: its whole, checksummed records, seqs increasing
    records: list[Record]
    #: where the last of them ends (what follows is torn or damaged)
    end: int
    #: record headers found after ``end`` (not counting one at ``end``: a write torn by a
    #: crash): each is a record once written whole, since the next one was begun after it
    lost_after: int = 0
    #: records whose checksum holds but whose seq is past :data:`LAST_SEQ` (not ours)
    refused: int = 0
    #: the scan stopped at its bound of work: the bytes after ``end`` were not all read
    gave_up: bool = False


class _Scan:
    """One pass over a segment: each candidate record is checked at most once, its header
    before its checksum, and the checksums of candidates that fail are bounded in bytes."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self.stream, self.size = stream, size
        self.records: list[Record] = []
        self.end = self.lost_after = self.refused = 0
        self.budget = RESYNC_WORK * size

    def record_at(self, at: int) -> int | None:
        """Check the candidate at ``at``; the offset after it when it is a good record."""
        raw = self.stream.get(at, at + HEADER)
        header = None if raw is None else read_header(raw)
        if header is None:
            return None
        if at > self.end:
            self.lost_after += 1
        after = at + HEADER + header.length
        if after > self.size or (self.records and header.seq <= self.records[-1].seq):
            return None  # cannot be whole, or not after the records already read
        if self.stream.crc(at + HEADER, after, seq_checksum(header.seq)) != header.crc:
            self.budget -= header.length
            return None
        if header.seq >= LAST_SEQ:
            self.refused += 1
            return None
        payload = self.stream.get(at + HEADER, after)
        self.records.append(Record(header.seq, payload or b""))
        self.end, self.lost_after = after, 0
        return after

    def result(self, gave_up: bool) -> SegmentRead:
        return SegmentRead(self.records, self.end, self.lost_after, self.refused, gave_up)


def read_records(path: Path) -> SegmentRead:
    """The whole records of a segment, and where the last one ends. A bad record in the
    middle is skipped (the next good one is found by its magic, a sane header and its
    checksum); bytes after the last good record are a torn tail. The work is linear in the
    segment's size: a header that cannot be whole (its length past the end of the file) is
    not checksummed, and once the checksums of candidates that failed pass
    :data:`RESYNC_WORK` times the size, the rest of the segment is left unread (logged).

    Raises:
        NotRegular: ``path`` is not a regular file.
        OSError: it could not be read.
    """
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb", buffering=0) as file:
        scan = _Scan(_Stream(file), os.fstat(file.fileno()).st_size)
        at = 0
        while True:
            scan.stream.forget(at)
            found = scan.record_at(at)
            if found is not None:
                at = found
                continue
            if scan.budget < 0:
                _log.error(
                    "journal %s: too much damage to find records after byte %d of %d; the rest is"
                    " not read and left as it is", path, scan.end, scan.size,
                )  # fmt: skip
                return scan.result(gave_up=True)
            at = scan.stream.find(RECORD_MAGIC, at + 1)
            if at < 0:
                return scan.result(gave_up=False)


def read_done(path: Path) -> tuple[int, bytes]:
    """The last seq marked done (0: none): the highest good mark of the file (older
    versions appended marks; a bad or torn one is skipped), and its first bytes (two
    slots and one byte more: enough to tell whether it is laid out).

    Raises:
        NotRegular: ``path`` is not a regular file.
        OSError: it could not be read.
    """
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0, b""
    done, head = 0, b""
    with os.fdopen(fd, "rb") as file:
        while chunk := file.read(DONE.size * 4096):
            head = head or chunk[: 2 * DONE.size + 1]
            done = max(done, read_done_marks(chunk))
    return done, head


def cut(path: Path, size: int) -> None:
    """Drop a torn tail, durably, before anything is appended after it."""
    try:
        fd = open_regular(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        torn = os.fstat(fd).st_size - size
        if torn > 0:
            _log.warning("journal %s: dropping %d bytes of a torn record", path, torn)
            os.ftruncate(fd, size)
            os.fsync(fd)
    finally:
        os.close(fd)
