"""Waiting on an event and ending background loops, without losing a cancel.

Python 3.11's ``asyncio.wait_for`` returns the awaited result, and drops the cancel, when
the task is cancelled in the loop turn the awaited thing completes in (an event set just
before a stop cancels the loop that waits for it). A ``while True`` loop around it then
goes on for ever, and whoever awaits the cancelled task waits for ever with it.
:func:`wait_event` waits without that loss; :func:`end_tasks` ends loops within a bound
whatever one of them did with a cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["end_tasks", "wait_event"]

#: How often a task that is still running after its cancel is cancelled again.
RECANCEL_SECS = 0.05


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass (None: no bound); whether it
    is set. A cancel always raises CancelledError here, even one that arrives as the
    event is set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


async def end_tasks(tasks: Iterable[asyncio.Task[None]], bound: float) -> list[str]:
    """Cancel ``tasks`` and wait until they end, cancelling again any that goes on, for at
    most ``bound`` seconds; returns the names of those still running then. What a task
    ended with (its exception) is its own business: it was logged where it happened."""
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    running = {task for task in tasks if not task.done()}
    while running and loop.time() < deadline:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=min(RECANCEL_SECS, deadline - loop.time()))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: asyncio would log it again at exit
    return sorted(task.get_name() for task in running)
