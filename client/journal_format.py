"""The journal's files on disk (see client/journal.py for the layout): records with their
checksums, done marks, the names of segments and held records, and the few durable file
operations the journal needs (a whole write, a file opened only if it is a regular file,
an fsync'd directory, the directory's lock). The readers are in client/journal_read.py.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

_log = logging.getLogger("mission_control.client.spool")

_RECORD = struct.Struct("<4sIIQ")  # magic, payload length, crc32(seq + payload), seq
RECORD_MAGIC = b"MCS1"
#: The size of a record's header (before its payload).
HEADER = _RECORD.size
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


def open_directory(directory: Path) -> tuple[int, str | None]:
    """Make and lock ``directory``: (the fd holding the lock, None), or (-1, why) when it
    cannot be opened (mode 000, a file in its place): nothing in it is read or written.

    Raises:
        JournalLocked: another process holds it.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return lock_directory(directory), None
    except OSError as exc:
        why = f"its directory could not be opened ({exc}); it is left as it is"
        _log.error("journal %s: %s", directory, why)
        return -1, why


def names(path: Path, fd: int) -> bool:
    """``path`` (not followed) is the file open as ``fd``: same device and inode."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def encode(seq: int, payload: bytes) -> bytes:
    """Record ``seq`` in the segments' format."""
    return _RECORD.pack(RECORD_MAGIC, len(payload), zlib.crc32(_SEQ.pack(seq) + payload), seq) + payload


def write_whole(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a short write, as on a full disk, is followed by an error)."""
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


@dataclass(frozen=True, slots=True)
class Header:
    """What a record's header says: its payload's length, checksum and seq."""

    length: int
    crc: int
    seq: int


def read_header(header: bytes) -> Header | None:
    """The header in ``header`` (:data:`HEADER` bytes), or None when it is not one of
    ours (no magic, a length past :data:`MAX_RECORD`)."""
    magic, length, crc, seq = _RECORD.unpack_from(header)
    return Header(length, crc, seq) if magic == RECORD_MAGIC and length <= MAX_RECORD else None


def seq_checksum(seq: int) -> int:
    """The running crc32 a record's checksum starts from: over its seq."""
    return zlib.crc32(_SEQ.pack(seq))


class NotRegular(OSError):
    """A file named like one of the journal's is not a regular file (a symbolic link, a
    FIFO, a directory, a device): it is never followed, opened for its data or changed."""


def open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open one of the journal's files: never through a symbolic link, never waiting on a
    FIFO, and only a regular file (checked on the open file, not on its name).

    Raises:
        NotRegular: ``path`` is something else (named in the message).
        OSError: it could not be opened.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        # ELOOP: a symbolic link; ENXIO: a FIFO nobody reads; EISDIR: a directory
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise _not_regular(path, None) from exc
        raise
    try:
        mode_found = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode_found):
            raise _not_regular(path, mode_found)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_regular(path: Path, mode: int | None) -> NotRegular:
    if mode is None:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = 0
    kinds = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")]  # fmt: skip
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return NotRegular(f"{path.name} is {kind}, not a regular file: not followed, read or changed")


def read_done_marks(data: bytes) -> int:
    """The highest good done mark in ``data`` (whole slots from its start; 0: none)."""
    done = 0
    for at in range(0, len(data) - DONE.size + 1, DONE.size):
        magic, seq, crc = DONE.unpack_from(data, at)
        if magic == _DONE_MAGIC and zlib.crc32(_SEQ.pack(seq)) == crc:
            done = max(done, seq)
    return done


def done_mark(seq: int) -> bytes:
    """The done mark of ``seq`` (one slot of ``done.log``)."""
    return DONE.pack(_DONE_MAGIC, seq, zlib.crc32(_SEQ.pack(seq)))


def numbered(name: str, prefix: str) -> int | None:
    """The seq in a name ``<prefix><20 digits>.log`` (None: not such a name)."""
    digits = name.removeprefix(prefix).removesuffix(".log")
    # isdigit() alone takes other scripts' digits ("²"), which int() refuses
    return int(digits) if len(digits) == 20 and digits.isascii() and digits.isdigit() else None
