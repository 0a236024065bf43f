"""Stopping ``serve`` within a bound, whatever etcd, the network or an exporter does.

Every step of a stop has a bound of its own (``STEP_SECS``): a step still running then is
cancelled, logged by name and left behind, and the stop goes on. Past the last step,
``asyncio.run`` waits for executor threads and the interpreter for its threads at exit,
which no step bounds; so a watchdog armed at the first SIGTERM or SIGINT ends the process
``STOP_BOUND_SECS`` after it whatever still runs, saying which step was unfinished. A
second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable

_log = logging.getLogger("mission_control.server.shutdown")

#: Each step of a control plane's stop, and how long it may take (seconds). "server" is
#: gRPC's stop, on top of the grace its calls get; "control plane" stores what was
#: decided (2 s), resigns the leadership (one etcd call) and ends the background loops (5 s).
STEP_SECS = {
    "dashboard": 3.0,
    "replica roster": 3.0,
    "health": 1.0,
    "server": 3.0,
    "control plane": 10.0,
    "etcd client": 3.0,
    "telemetry": 5.0,
}
#: The grace gRPC calls in flight get when serve stops.
GRACE_SECS = 2.0
#: An embedded etcd's stop (SIGTERM, 10 s, then SIGKILL, 5 s).
EMBEDDED_ETCD_SECS = 15.0
#: serve has exited at most this long after its first SIGTERM or SIGINT.
STOP_BOUND_SECS = sum(STEP_SECS.values()) + GRACE_SECS + EMBEDDED_ETCD_SECS
#: The exit status when the watchdog ends the process (not a clean stop).
EXIT_STOP_TIMEOUT = 1


class StopSteps:
    """Runs the steps of one stop, each within its bound, and remembers which one runs."""

    def __init__(self) -> None:
        self.current = ""
        self.unfinished: list[str] = []

    async def run(self, name: str, work: Awaitable[object], secs: float | None = None) -> bool:
        """Await ``work`` for at most ``secs`` (default: its ``STEP_SECS``); whether it ended
        well. One that did not is cancelled and logged, never waited for again."""
        bound = STEP_SECS[name] if secs is None else secs
        self.current = name
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=bound)
        except asyncio.CancelledError:  # the stop itself was cancelled: so is its step
            task.cancel()
            raise
        self.current = ""
        if not done:
            task.cancel()
            self.unfinished.append(name)
            _log.error("stopping: %s did not end within %g s; going on without it", name, bound)
            return False
        if task.cancelled():
            self.unfinished.append(name)
            return False
        err = task.exception()
        if err is not None:
            _log.error("stopping: %s failed (%s: %s); going on", name, type(err).__name__, err)
            return False
        return True


async def in_daemon_thread(fn: Callable[[], object], name: str) -> None:
    """Run ``fn`` in a daemon thread of its own (not the executor ``asyncio.run`` waits for
    at exit): one that never returns cannot hold the process."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            fn()
        except Exception:
            _log.exception("stopping: %s failed", name)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=run, name=name, daemon=True).start()
    await done


class Watchdog:
    """Ends the process ``bound`` seconds after :meth:`arm` (or at once on :meth:`now`),
    saying what was unfinished; ``last`` runs first (stops what the process started)."""

    def __init__(
        self,
        steps: StopSteps,
        bound: float = STOP_BOUND_SECS,
        last: Callable[[], None] = lambda: None,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.steps, self.bound, self.last, self.exit = steps, bound, last, exit
        self._armed = threading.Event()
        self._fired = threading.Lock()

    def arm(self) -> None:
        if self._armed.is_set():
            return
        self._armed.set()
        threading.Thread(target=self._wait, name="stop-watchdog", daemon=True).start()

    def _wait(self) -> None:
        threading.Event().wait(self.bound)
        self.now(f"stopping took longer than {self.bound:g} s")

    def now(self, why: str = "signalled again while stopping") -> None:
        """End the process now (once)."""
        if not self._fired.acquire(blocking=False):
            return
        running = ", ".join([*self.steps.unfinished, self.steps.current or "the exit after the last step"])
        print(f"mission-control: {why} (unfinished: {running}); exiting", file=sys.stderr, flush=True)
        try:
            self.last()
        finally:
            self.exit(EXIT_STOP_TIMEOUT)
