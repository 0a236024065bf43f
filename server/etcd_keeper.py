"""Keeps the embedded etcd of ``mission-control serve`` running.

When the etcd ``serve`` started ends by itself (killed, crashed, out of memory), it is
reaped at once (no zombie is left) and started again on the same ports with the same data
directory, with a bounded backoff between failed attempts. The log says so once per outage
(when it ended, and when it answers again), not at every attempt; the state folder's lock
tells ``mission-control status`` that the etcd is down meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from .etcd_process import EtcdProcess, EtcdUnavailable

__all__ = ["CHECK_EVERY_SECS", "FIRST_BACKOFF_SECS", "MAX_BACKOFF_SECS", "keep_running"]

_log = logging.getLogger(__name__)

#: How often the etcd process is looked at (and reaped once it ended).
CHECK_EVERY_SECS = 0.2
#: The wait after a failed restart, doubled after each failure up to MAX_BACKOFF_SECS.
FIRST_BACKOFF_SECS = 0.5
MAX_BACKOFF_SECS = 15.0
#: How long one restart may take to answer before it counts as failed.
START_TIMEOUT_SECS = 30.0


async def keep_running(
    etcd: EtcdProcess,
    on_down: Callable[[int | None], None],
    on_up: Callable[[int | None], None],
    *,
    check_every: float = CHECK_EVERY_SECS,
    first_backoff: float = FIRST_BACKOFF_SECS,
    max_backoff: float = MAX_BACKOFF_SECS,
) -> None:
    """Restart ``etcd`` whenever it ends, until cancelled. ``on_down(pid)`` is called
    when it was found ended, ``on_up(pid)`` once a restart answers."""
    while True:
        await asyncio.sleep(check_every)
        if etcd.running:  # polls the process: an ended one is reaped here
            continue
        pid, code = etcd.last_pid, etcd.exit_code
        _log.warning(
            "the embedded etcd (pid %s) ended (%s); restarting it at %s with its data in %s "
            "(retrying with a backoff up to %gs until it answers)",
            pid,
            _ended(code),
            etcd.endpoint,
            etcd.data_dir,
            max_backoff,
        )
        on_down(pid)
        backoff = first_backoff
        failures = 0
        while True:
            try:
                await _start(etcd)
                break
            except EtcdUnavailable as err:
                failures += 1
                # the first failure is told; the next ones only in the debug log
                log = _log.warning if failures == 1 else _log.debug
                log("restarting the embedded etcd failed (%s); trying again in %gs", err, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
        _log.info(
            "the embedded etcd answers again at %s (pid %s, %d failed attempt%s)",
            etcd.endpoint,
            etcd.pid,
            failures,
            "" if failures == 1 else "s",
        )
        on_up(etcd.pid)


async def _start(etcd: EtcdProcess) -> None:
    """Start ``etcd`` in a thread; a cancel aborts the start and waits for it to end, so
    no etcd is left starting behind the caller."""
    starting = asyncio.ensure_future(asyncio.to_thread(etcd.start, START_TIMEOUT_SECS))
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        etcd.abort()
        with contextlib.suppress(Exception):
            await starting
        raise


def _ended(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
