"""The journal's files on disk (see client/journal.py for the layout): records with their
checksums, done marks, the names of segments and held records, and the few durable file
operations the journal needs (a whole write, a cut torn tail, an fsync'd directory, the
directory's lock). Readers here never raise on bad bytes: a record that fails its checks
is skipped.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

_log = logging.getLogger("mission_control.client.spool")

_RECORD = struct.Struct("<4sIIQ")  # magic, payload length, crc32(seq + payload), seq
_RECORD_MAGIC = b"MCS1"
DONE = struct.Struct("<4sQI")  # magic, seq, crc32(seq)
_DONE_MAGIC = b"MCD1"
_SEQ = struct.Struct("<Q")
#: No journal writes this many records; a done mark beyond it is corrupt.
LAST_SEQ = 2**63
#: A record longer than this is not one of ours (a corrupt length field).
MAX_RECORD = 16 * 1024 * 1024
#: errnos that mean the disk (or the process's share of it) is full
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class JournalFull(Exception):
    """The journal holds its bound of records or bytes: the record was not kept."""


class JournalBroken(Exception):
    """The journal's files cannot hold a record now (a failed or short write, a deleted
    directory): the record was not kept."""


class JournalLocked(Exception):
    """Another process has the journal open."""


def refusal(directory: Path, exc: OSError) -> Exception:
    """What a record that could not be written is refused with: full, or broken."""
    if exc.errno in NO_SPACE:
        return JournalFull(f"spool {directory}: the disk is full ({exc.strerror})")
    return JournalBroken(f"spool {directory}: the record could not be written ({exc})")


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    payload: bytes


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a name made or removed in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_directory(directory: Path) -> int:
    """Lock ``directory`` for this process (``flock``); returns the fd holding the lock.

    Raises:
        JournalLocked: another process holds it.
    """
    # The lock is on the directory itself: a lock file could be deleted while held,
    # and the next process would lock a new file of the same name.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalLocked(f"spool {directory} is open in another process") from None
    return fd


def encode(seq: int, payload: bytes) -> bytes:
    """Record ``seq`` in the segments' format."""
    return _RECORD.pack(_RECORD_MAGIC, len(payload), zlib.crc32(_SEQ.pack(seq) + payload), seq) + payload


def write_whole(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a short write, as on a full disk, is followed by an error)."""
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


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


def read_records(path: Path) -> tuple[list[Record], int]:
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


def read_done(path: Path) -> tuple[int, bytes]:
    """The last seq marked done (0: none): the highest good mark of the file (older
    versions appended marks; a bad or torn one is skipped), and the file's bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, b""
    done = 0
    for at in range(0, len(data) - DONE.size + 1, DONE.size):
        magic, seq, crc = DONE.unpack_from(data, at)
        if magic == _DONE_MAGIC and zlib.crc32(_SEQ.pack(seq)) == crc:
            done = max(done, seq)
    return done, data


def done_mark(seq: int) -> bytes:
    """The done mark of ``seq`` (one slot of ``done.log``)."""
    return DONE.pack(_DONE_MAGIC, seq, zlib.crc32(_SEQ.pack(seq)))


def numbered(name: str, prefix: str) -> int | None:
    """The seq in a name ``<prefix><20 digits>.log`` (None: not such a name)."""
    digits = name.removeprefix(prefix).removesuffix(".log")
    # isdigit() alone takes other scripts' digits ("²"), which int() refuses
    return int(digits) if len(digits) == 20 and digits.isascii() and digits.isdigit() else None


def cut(path: Path, size: int) -> None:
    """Drop a torn tail, durably, before anything is appended after it."""
    if path.exists() and path.stat().st_size > size:
        _log.warning("journal %s: dropping %d bytes of a torn record", path, path.stat().st_size - size)
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())
