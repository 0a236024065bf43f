"""A journal's segment files (see client/journal.py): the list of them with the last seq
each holds, and the one being appended to; a record written whole or not at all, a new
segment when the current one is full, and the segments all done deleted.

The journal holds its lock around every method here: one thread at a time changes the
files and the list.
"""

from __future__ import annotations

import os
from pathlib import Path

from .journal_format import JournalBroken, fsync_dir, names, open_regular, refusal, write_whole

__all__ = ["Segments"]


class Segments:
    """The segment files of one journal directory.

    Args:
        directory: the journal's directory.
        segment_bytes: size after which appends go to a new segment file.
    """

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        #: (file, last seq in it), oldest first.
        self.files: list[tuple[Path, int]] = []
        #: Why a write left the files unfit for more records (None: it did not).
        self.broken: str | None = None
        self._fd: int | None = None

    def write(self, seq: int, record: bytes) -> None:
        """Write and fsync record ``seq`` whole, or leave the segment as it was and raise
        (:attr:`broken` says when the files can take no more records).

        Raises:
            JournalFull: the disk is full.
            JournalBroken: the record could not be written, or its segment was deleted.
        """
        try:
            fd = self._segment_for(seq)
            start = os.fstat(fd).st_size
        except OSError as exc:
            raise refusal(self.directory, exc) from exc
        try:
            write_whole(fd, record)
            os.fsync(fd)
            if not names(self.files[-1][0], fd):  # by identity: a held link keeps its link count
                self.broken = f"its segment {self.files[-1][0].name} was deleted"
                raise JournalBroken(f"spool {self.directory} is broken: {self.broken}")
        except OSError as exc:
            self._roll_back(fd, start)
            raise refusal(self.directory, exc) from exc
        path, _ = self.files[-1]
        self.files[-1] = (path, seq)

    def _roll_back(self, fd: int, start: int) -> None:
        """Cut a failed record off, so that the next one follows the last whole one."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            # Records appended after a torn one would be cut with it when the journal is opened.
            self.broken = f"a torn record could not be removed ({exc})"

    def _segment_for(self, seq: int) -> int:
        if self._fd is not None and os.fstat(self._fd).st_size < self.segment_bytes:
            return self._fd
        self.close()
        path = self.directory / f"segment-{seq:020d}.log"
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        if not self.files or self.files[-1][0] != path:
            self.files.append((path, seq - 1))
        self._fd = fd
        fsync_dir(self.directory)  # the new file's name survives a crash
        return fd

    def forget_done(self, done: int) -> None:
        """Delete the segments every record of which is done (up to ``done``), never the
        one being appended to."""
        current = self.files[-1][0] if self.files and self._fd is not None else None
        keep = []
        for path, last in self.files:
            if last <= done and path != current:
                path.unlink(missing_ok=True)
            else:
                keep.append((path, last))
        self.files = keep

    def close(self) -> None:
        """Close the segment being appended to (the next record opens one)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
