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
from .journal_read import cut

_log = logging.getLogger("mission_control.client.spool")

#: Reads a segment: its whole records and where the last one ends.
ReadRecords = Callable[[Path], tuple[list[Record], int]]


@dataclass(frozen=True)
class Contents:
    """The records of a journal's segments not done, and its segments."""

    pending: list[Record]
    #: (file, last seq in it), oldest first
    segments: list[tuple[Path, int]]
    #: the seq the next record gets
    next_seq: int


def read_segments(directory: Path, done: int, read_records: ReadRecords) -> Contents:
    """Read the segments of ``directory`` past the done mark ``done``.

    Raises:
        OSError: a file could not be read, cut or deleted.
        JournalBroken: the done mark is past every record kept (see :func:`check_done_mark`).
    """
    pending: list[Record] = []
    segments: list[tuple[Path, int]] = []
    next_seq = done + 1
    for path in segment_files(directory):
        records, end = read_records(path)
        cut(path, end)
        if not records:
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
    return Contents(pending, segments, next_seq)


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


def count_corrupt(directory: Path, done: int, pending: list[Record]) -> int:
    """Seqs missing between the done mark and the records read were in records that
    failed their checks: counted, and logged (the records after them are kept)."""
    corrupt, last = 0, done
    for record in pending:  # in increasing seq order: never a negative count
        corrupt += record.seq - last - 1
        last = record.seq
    if corrupt:
        _log.error("journal %s: %d corrupt records skipped", directory, corrupt)
    return corrupt
