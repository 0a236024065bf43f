"""A virtual-time asyncio event loop: when nothing is ready, time jumps to the next timer.

The loop is asyncio's own selector loop; only its clock and its wait differ. ``time()``
is a counter, and the selector never blocks: a wait of ``t`` seconds moves the counter by
``t`` at once. Everything scheduled with ``call_later``, ``sleep``, ``wait_for`` and
timeouts therefore runs in the same order as in real time, as fast as the CPU allows, and
a schedule is a pure function of its seed.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

#: How schedule pools start their workers: fresh interpreters, not forks. A fork of a pytest
#: worker that ran gRPC tests before inherits gRPC objects whose threads it lacks; the first
#: garbage collection in the child (``run``'s) then waits on such a thread for ever (seen:
#: both workers of a full run stuck at their first schedule).
FRESH_PROCESSES = multiprocessing.get_context("spawn")

T = TypeVar("T")


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is set: the simulation can never move again."""


class TooManySteps(RuntimeError):
    """The loop ran more steps than its budget: a schedule that spins (a bound in
    simulated work, where a wall-clock timeout would depend on the machine's load)."""


class _VirtualSelector(selectors.DefaultSelector):
    """Polls the real selector (the loop's self-pipe) without blocking; a wait is a jump
    of the virtual clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        # Only the loop's self-pipe is registered (nothing here does real I/O): poll it
        # when the loop has nothing else to do, not on every turn.
        if timeout == 0:
            return []
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise Deadlock("no callback is ready and no timer is set")
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual, starting at ``start``."""

    def __init__(self, start: float = 1000.0, max_steps: int | None = None) -> None:
        self.steps = 0
        self.max_steps = max_steps
        self._vselector = _VirtualSelector()
        self._vselector.now = start
        super().__init__(self._vselector)
        # Timers due within one clock resolution run together; keep it exact.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._vselector.now

    def _run_once(self) -> None:
        self.steps += 1
        if self.max_steps is not None and self.steps > self.max_steps:
            raise TooManySteps(f"more than {self.max_steps} loop steps")
        super()._run_once()  # type: ignore[misc]


def run(main: Coroutine[Any, Any, T], *, start: float = 1000.0, max_steps: int | None = None) -> T:
    """Run ``main`` to completion on a fresh virtual-time loop (raises TooManySteps past
    ``max_steps`` turns of the loop)."""
    loop = VirtualTimeLoop(start, max_steps)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
        finally:
            loop.close()
            # Finalize the schedule's tasks and generators now: collected later, inside
            # some unrelated compile(), their finalizers trip CPython 3.11's AST recursion
            # check ("AST constructor recursion depth mismatch", gh-106905).
            gc.collect()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
