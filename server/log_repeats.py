"""Repeated warnings of the etcd client library, told once a minute instead of every second.

While etcd is down, the library's watches each log a warning at every reconnect attempt
(several a second with a few watches open). The first one of a kind goes through; the
same kind again within the window is counted, and the next one let through says how many
were not shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["QUIET_LOGGERS", "Repeats", "quiet_repeats"]

#: Loggers of libraries whose repeated warnings are rate-limited.
QUIET_LOGGERS = ("etcd3aio.watch", "etcd3aio.lease", "etcd3aio.auth")
#: One record of a kind per this many seconds.
WINDOW_SECS = 60.0


class Repeats(logging.Filter):
    """Let one record of each kind (logger, level, message template, first argument) a
    ``window``; count the others."""

    def __init__(self, window: float = WINDOW_SECS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._last: dict[tuple[str, int, str, str], float] = {}
        self._hidden: dict[tuple[str, int, str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        first = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        kind = (record.name, record.levelno, str(record.msg), str(first))
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.window:
            self._hidden[kind] = self._hidden.get(kind, 0) + 1
            return False
        if len(self._last) > 1000:  # kinds are few; bounded whatever a library logs
            self._last.clear()
            self._hidden.clear()
        self._last[kind] = now
        hidden = self._hidden.pop(kind, 0)
        if hidden:
            record.msg = f"{record.msg} ({hidden} more like it in the last {self.window:g} s not shown)"
        return True


def quiet_repeats(names: tuple[str, ...] = QUIET_LOGGERS, window: float = WINDOW_SECS) -> None:
    """Rate-limit the repeated records of the loggers ``names`` (once per process)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Repeats) for f in logger.filters):
            logger.addFilter(Repeats(window))
