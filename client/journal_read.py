"""Reading the journal's files (formats in client/journal_format.py) without trusting them:
each is opened only if it is a regular file (never through a symbolic link, never a FIFO:
:func:`~.journal_format.open_regular`) and read in bounded chunks, so a huge file of
garbage costs a chunk of memory, not its size. A record that fails its checks is skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

from .journal_format import (
    DONE,
    HEADER,
    RECORD_MAGIC,
    Record,
    decode,
    open_regular,
    read_done_marks,
    record_length,
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

    def get(self, start: int, end: int) -> bytes | None:
        """The bytes [start, end) of the file, or None when it ends before ``end``."""
        while self._base + len(self._buf) < end and not self.eof:
            self._more(end - self._base - len(self._buf))
        if self._base + len(self._buf) < end:
            return None
        return bytes(self._buf[start - self._base : end - self._base])

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


def _record_at(stream: _Stream, at: int) -> tuple[Record, int] | None:
    """The whole, checksummed record at ``at`` and where it ends, else None."""
    header = stream.get(at, at + HEADER)
    length = None if header is None else record_length(header)
    if length is None:
        return None
    whole = stream.get(at, at + HEADER + length)
    record = None if whole is None else decode(whole)
    return None if record is None else (record, at + HEADER + length)


def read_records(path: Path) -> tuple[list[Record], int]:
    """The whole records of a segment, and the offset where the last one ends. A bad
    record in the middle is skipped (the next good one is found by its magic and checksum);
    bytes after the last good record are a torn tail.

    Raises:
        NotRegular: ``path`` is not a regular file.
        OSError: it could not be read.
    """
    records: list[Record] = []
    at = good_end = 0
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb", buffering=0) as file:
        stream = _Stream(file)
        while True:
            stream.forget(at)
            found = _record_at(stream, at)
            if found is None:
                at = stream.find(RECORD_MAGIC, at + 1)
                if at < 0:
                    break
                continue
            record, at = found
            if not records or record.seq > records[-1].seq:
                records.append(record)
            good_end = at
    return records, good_end


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
