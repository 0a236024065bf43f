"""What a journal's files hold when it opens (see client/journal.py): its segments read
oldest first, each cut at its last whole record (a torn tail) and deleted when empty; the
records not done yet, in order, each once; the done mark checked against them; and the
records lost between them (failed their checks) counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .journal_format import LAST_SEQ, JournalBroken, Record, numbered
from .journal_lost import LostLog, lost_ranges
from .journal_read import SegmentRead, cut

_log = logging.getLogger("mission_control.client.spool")

#: Reads a segment: what it holds (see :class:`~.journal_read.SegmentRead`).
ReadRecords = Callable[[Path], SegmentRead]


@dataclass(frozen=True)
class Contents:
    """The records of a journal's segments not done, and its segments."""

    pending: list[Record]
    #: (file, last seq in it), oldest first
    segments: list[tuple[Path, int]]
    #: the seq the next record gets
    next_seq: int
    #: the highest seq known to have been written (a record read, a segment's name, a
    #: record header after a damaged record): the records up to it not read are lost
    newest: int = 0
    #: records whose checksum holds but whose seq no journal writes (refused)
    refused: int = 0


def read_segments(directory: Path, done: int, read_records: ReadRecords) -> Contents:
    """Read the segments of ``directory`` past the done mark ``done``.

    Raises:
        OSError: a file could not be read, cut or deleted.
        JournalBroken: the done mark is past every record kept (see :func:`check_done_mark`).
    """
    pending: list[Record] = []
    segments: list[tuple[Path, int]] = []
    next_seq, newest, refused = done + 1, 0, 0
    for path in segment_files(directory):
        found = read_records(path)
        records, refused = found.records, refused + found.refused
        # a segment is named after its first record: every seq before it was written
        last = records[-1].seq if records else (numbered(path.name, "segment-") or 1) - 1
        newest = max(newest, last + found.lost_after)
        if found.gave_up:  # what was not read is left for the operator; the next
            newest = max(newest, last + 1)  # record goes to a segment of another name
        else:
            cut(path, found.end)
        if not records:
            if not found.gave_up:
                path.unlink()
            continue
        if segments and records[0].seq <= segments[-1][1]:  # seqs only grow from one segment to the next
            _log.error(
                "journal %s: %s repeats records of an earlier segment; read once", directory, path.name
            )
        segments.append((path, records[-1].seq))
        next_seq = max(next_seq, records[-1].seq + 1)
        after = pending[-1].seq if pending else done
        pending.extend(r for r in records if r.seq > after)
    check_done_mark(done, segments)
    newest = min(newest, LAST_SEQ - 1)
    # a lost record's seq is not given again: its receipt named it
    return Contents(pending, segments, max(next_seq, newest + 1), newest, refused)


def segment_files(directory: Path) -> list[Path]:
    """The segments, oldest first; another file named like one (a copy) is left alone."""
    segments = []
    for path in sorted(directory.glob("segment-*.log")):
        if numbered(path.name, "segment-") is not None:
            segments.append(path)
        else:
            _log.error(
                "journal %s: %s is not a segment's name; not read, left as it is",
                directory,
                path.name,
            )
    return segments


def check_done_mark(done: int, segments: list[tuple[Path, int]]) -> None:
    """A done mark past every record kept (a segment is deleted only once all its
    records are done, and never before a newer one) was not written by the journal:
    trusting it would drop the records silently.

    Raises:
        JournalBroken: the mark is past the records, or past any seq ever written.
    """
    newest = segments[-1][1] if segments else None
    if done >= LAST_SEQ or (newest is not None and done > newest):
        raise JournalBroken(f"done.log marks #{done} done, but the newest record kept is #{newest or 0}")


def count_corrupt(directory: Path, done: int, found: Contents) -> int:
    """Records past the done mark that are known to have been written but were not read,
    and not counted at an earlier opening (client/journal_lost.py): seqs missing between
    the records read (they failed their checks), seqs after the last one read up to
    :attr:`Contents.newest` (a cut or damaged tail, a segment whose records were all
    lost), and records refused. Logged (the records read are kept)."""
    ranges = lost_ranges(done, [record.seq for record in found.pending], found.newest)
    new = LostLog(directory).newly_lost(ranges, found.refused)
    corrupt = found.refused + sum(last - first + 1 for first, last in ranges)
    if corrupt:
        _log.error(
            "journal %s: %d corrupt or lost records skipped (%d of them counted at an earlier opening)",
            directory, corrupt, corrupt - new,
        )  # fmt: skip
    return new
