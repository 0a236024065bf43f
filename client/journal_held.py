"""The journal's held records (see client/journal.py): records handled by being set aside,
not made, kept for the operator and never deleted by the journal. ``held.log`` holds them
in the segments' format; on a full disk a record is held in place instead, by a second
name (hard link) ``held-<seq>.log`` of the segment that holds it, which needs no new space.
Not locked here: the journal calls it under its own lock.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .journal_format import NO_SPACE, Record, encode, fsync_dir, numbered, open_regular, write_whole
from .journal_read import read_records

_log = logging.getLogger("mission_control.client.spool")


def hold(directory: Path, segments: Sequence[tuple[Path, int]], record: Record) -> None:
    """Hold ``record`` in ``held.log``, or on a full disk in place (``segments``: the
    journal's (file, last seq in it), oldest first).

    Raises:
        OSError: it could not be kept; the files are as they were.
    """
    try:
        _hold_in_log(directory, record)
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        _hold_in_place(directory, segments, record)


def _hold_in_place(directory: Path, segments: Sequence[tuple[Path, int]], record: Record) -> None:
    segment = next((path for path, last in segments if last >= record.seq), None)
    if segment is None:
        raise OSError(errno.ENOENT, f"no segment holds record #{record.seq}")
    link = directory / f"held-{record.seq:020d}.log"
    if not os.path.lexists(link):
        os.link(segment, link)
        fsync_dir(directory)
    _log.warning(
        "journal %s: held.log is out of disk space; record #%d is held in %s",
        directory,
        record.seq,
        link.name,
    )


def _hold_in_log(directory: Path, record: Record) -> None:
    fd = open_regular(directory / "held.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        start = os.fstat(fd).st_size
        try:
            write_whole(fd, encode(record.seq, record.payload))
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def read_held(directory: Path) -> list[Record]:
    """The records held in ``directory``, in order, each once."""
    path = directory / "held.log"
    held = {r.seq: r for r in (read_records(path).records if os.path.lexists(path) else [])}
    for link in directory.glob("held-*.log"):
        seq = numbered(link.name, "held-")
        if seq is not None:
            held.update((r.seq, r) for r in read_records(link).records if r.seq == seq)
    return [held[seq] for seq in sorted(held)]


class HeldRecords:
    """The records held in ``directory``, known by seq: each is held once, and one whose
    file was deleted since it was last read is logged. Not locked here: the journal calls
    it under its own lock (reading takes none)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        #: seqs of the records held, as last read (see :meth:`read`) and kept since
        self.seqs: frozenset[int] = frozenset()

    def hold(self, segments: Sequence[tuple[Path, int]], record: Record) -> bool:
        """:func:`hold` ``record`` unless it already is; returns whether it was held now.

        Raises:
            OSError: it could not be kept; the files are as they were.
        """
        if record.seq in self.seqs:
            return False
        hold(self.directory, segments, record)
        self.seqs = self.seqs | {record.seq}
        return True

    def read(self) -> list[Record]:
        """The records held, in order (see :func:`read_held`).

        Raises:
            OSError: they could not be read.
        """
        records = read_held(self.directory)
        found = frozenset(record.seq for record in records)
        gone = sorted(self.seqs - found)
        if gone:
            _log.error(
                "journal %s: held writes %s are gone (their held-<seq>.log was deleted?): not held any more",
                self.directory, ", ".join(f"#{seq}" for seq in gone),
            )  # fmt: skip
        self.seqs = found
        return records
