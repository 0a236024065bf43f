"""The records a journal found lost and counted already (``lost.log``, see
client/journal.py), so that opening it again before it drains past them does not count
them again.

A record lost (it failed its checks, or a cut took it) stays lost until the done mark
passes its seq; every opening finds it again. The file holds the seqs counted, as ranges
``first..last`` past the done mark, and the records refused (no usable seq: counted by
number); an opening counts only what it holds no more of, then writes what it found. A
file that cannot be read counts everything again (logged): a count too high rather than
a loss unsaid.

Layout: ``MCLOST1\\n``, refused (u64), ranges (u64 pairs), crc32 of all before it (u32).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
import zlib
from pathlib import Path

from .journal_format import fsync_dir, open_regular

_log = logging.getLogger("mission_control.client.spool")

MAGIC = b"MCLOST1\n"
_U64 = struct.Struct("<Q")
_RANGE = struct.Struct("<QQ")
_CRC = struct.Struct("<I")
#: Bigger than a journal's ranges can be (one per record kept, and one more): not ours.
MOST_BYTES = 64 * 1024 * 1024

Ranges = list[tuple[int, int]]


def lost_ranges(done: int, seqs: list[int], newest: int) -> Ranges:
    """The seqs past ``done`` known written but not read: before, between and after the
    records read (``seqs``, increasing), up to ``newest``."""
    ranges, last = [], done
    for seq in seqs:
        if seq > last + 1:
            ranges.append((last + 1, seq - 1))
        last = seq
    if newest > last:
        ranges.append((last + 1, newest))
    return ranges


def not_in(ranges: Ranges, counted: Ranges) -> int:
    """How many seqs of ``ranges`` no range of ``counted`` holds (both sorted, disjoint)."""
    left, k = 0, 0
    for first, last in ranges:
        size = last - first + 1
        while k < len(counted) and counted[k][1] < first:
            k += 1
        j = k
        while j < len(counted) and counted[j][0] <= last:
            size -= min(last, counted[j][1]) - max(first, counted[j][0]) + 1
            j += 1
        left += size
    return left


class LostLog:
    """The lost records counted in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "lost.log"

    def newly_lost(self, ranges: Ranges, refused: int) -> int:
        """The records of ``ranges`` and ``refused`` not counted at an earlier opening;
        what is lost now is kept as counted (best effort: logged when it cannot be)."""
        counted, counted_refused = self._read()
        new = not_in(ranges, counted) + max(0, refused - counted_refused)
        if (ranges, refused) != (counted, counted_refused):
            self._write(ranges, refused)
        return new

    def _read(self) -> tuple[Ranges, int]:
        try:
            fd = open_regular(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            _log.error("journal %s: %s could not be read (%s); its lost records are counted again",
                       self.path.parent, self.path.name, exc)  # fmt: skip
            return [], 0
        try:
            data = os.read(fd, MOST_BYTES + 1)
        finally:
            os.close(fd)
        found = _decode(data)
        if found is None:
            _log.error("journal %s: %s is damaged; its lost records are counted again",
                       self.path.parent, self.path.name)  # fmt: skip
            return [], 0
        return found

    def _write(self, ranges: Ranges, refused: int) -> None:
        body = MAGIC + _U64.pack(refused) + b"".join(_RANGE.pack(a, b) for a, b in ranges)
        data = body + _CRC.pack(zlib.crc32(body))
        temporary = self.path.with_name("lost.log.new")
        try:
            fd = open_regular(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            _log.warning("journal %s: the lost records counted could not be kept (%s); "
                         "opening it again counts them again", self.path.parent, exc)  # fmt: skip


def _decode(data: bytes) -> tuple[Ranges, int] | None:
    """The file's ranges and refused count, or None when it is not one this module wrote."""
    size = len(data) - len(MAGIC) - _U64.size - _CRC.size
    if size < 0 or size % _RANGE.size or len(data) > MOST_BYTES or not data.startswith(MAGIC):
        return None
    body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(body) != crc:
        return None
    (refused,) = _U64.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _U64.size
    ranges = [_RANGE.unpack_from(body, start + i * _RANGE.size) for i in range(size // _RANGE.size)]
    if any(a > b for a, b in ranges) or any(p[1] >= q[0] for p, q in itertools.pairwise(ranges)):
        return None
    return ranges, refused
