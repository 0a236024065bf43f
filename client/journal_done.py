"""The journal's done marks (``done.log``, see client/journal.py): which records were
handled. The file holds two slots; it is written whole when the journal opens and marks
are then written in place, so marking a record done never needs more disk space. A mark
goes to the slot that does not hold the last fsync'd mark, so a torn write never loses
that one. Not locked here: the journal calls it under its own lock.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from .journal_format import DONE, done_mark, fsync_dir, open_regular
from .journal_read import read_done

_log = logging.getLogger("mission_control.client.spool")


class DoneLog:
    """The done marks of the journal in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "done.log"
        #: Every record up to this seq was handled (0: none).
        self.seq = 0
        #: Marks written but not fsync'd yet (see :meth:`write`).
        self.unsynced = False
        self._slot = 0  # the slot holding the last fsync'd mark
        self._ready = False  # the file is laid out: a mark needs no new space
        self._read = b""

    def read(self) -> int:
        """Read the highest good mark from the file; returns it. :meth:`settle` after it
        is checked against the records."""
        self.seq, self._read = read_done(self.path)
        return self.seq

    def settle(self) -> None:
        """Lay the file out unless it already is (a failure is logged; the next mark
        tries again)."""
        self._slot = 0
        self._ready = self._read == done_mark(self.seq) * 2
        self._read = b""
        if not self._ready:
            with contextlib.suppress(OSError):
                self.lay_out()

    def lay_out(self) -> None:
        """Write ``done.log`` whole (both slots hold the done mark), so marks never need
        more space. On a full disk this fails for a new file: logged, and tried again at
        the next mark (the one time a mark may need space)."""
        try:
            fd = open_regular(self.path, os.O_WRONLY | os.O_CREAT)
            try:
                os.pwrite(fd, done_mark(self.seq) * 2, 0)  # over the old marks: max is kept
                os.fsync(fd)
                os.ftruncate(fd, 2 * DONE.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.directory)
        except OSError as exc:
            _log.warning("journal %s: the done marks' file could not be laid out (%s)", self.directory, exc)
            raise
        self._slot, self._ready = 0, True

    def write(self, seq: int, sync: bool) -> bool:
        """Mark every record up to ``seq`` done in the file (fsync'd with ``sync``);
        returns False when it already was.

        Raises:
            OSError: the mark could not be written; nothing changed.
        """
        if seq <= self.seq:
            return False
        if not os.path.lexists(self.path):  # deleted from under the journal
            self._ready = False
        if not self._ready:
            self.lay_out()  # OSError: not marked
        slot = 1 - self._slot  # never over the last fsync'd mark
        fd = open_regular(self.path, os.O_WRONLY)  # OSError: not marked
        try:
            if os.pwrite(fd, done_mark(seq), slot * DONE.size) != DONE.size:
                raise OSError(errno.EIO, "short write of a done mark")
            if sync:
                os.fsync(fd)
                self._slot = slot
        finally:
            os.close(fd)
        self.seq = seq
        self.unsynced = not sync
        return True

    def sync(self) -> bool:
        """fsync the marks written without it; returns False when there were none.

        Raises:
            OSError: the fsync failed (the marks stay unsynced).
        """
        if not self.unsynced:
            return False
        fd = open_regular(self.path, os.O_WRONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._slot = 1 - self._slot
        self.unsynced = False
        return True
