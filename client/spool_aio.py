"""The write spool of an ``async def`` write function: the rules of :mod:`.spool`, the same
journal and record format, and an asyncio task instead of a thread for the replay.

The event loop never waits on the disk: every journal operation that fsyncs (an append,
a done mark) runs on the spool's own single I/O thread, one after another in the order
they were asked for, while the loop serves other tasks. Writes are kept in the order the
callers reached the spool: an ``asyncio.Condition`` is held across the append, so a later
write cannot be appended before an earlier one.

The replay task starts on the running loop when the function is decorated inside it, or
at the first write, or at :meth:`AsyncWriteSpool.start` (call it once the loop runs, to
replay what a previous process left when no new write comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .journal import Record
from .spool_common import (
    JOURNAL_REFUSALS,
    ReplayOutcome,
    SpoolCore,
    Spooled,
    writing,
)
from .write_attempts import WriteAttempts, tracking

__all__ = ["AsyncWriteSpool"]

_log = logging.getLogger("mission_control.client.spool")

T = TypeVar("T")


class AsyncWriteSpool(SpoolCore):
    """The spool of one protected ``async def`` write function (see the module's rules).

    Args:
        call: makes one write under the service's policy: ``await call(args, kwargs)``.
        the rest: as :class:`~.spool_common.SpoolCore`.
    """

    def __init__(
        self, directory: str | Path, *, call: Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]],
        **options: Any,
    ) -> None:  # fmt: skip
        super().__init__(directory, read_later=True, **options)
        self._call = call
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spool-{self.service}")
        # Reading what a previous process left is the I/O thread's first job: decorating
        # returns at once, and the first write or replay waits for it (see _read).
        self._reading = self._io.submit(self._read_journal)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None  # the spool emptied, or a replay failed
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        with contextlib.suppress(RuntimeError):  # no running loop yet: the first write starts it
            self.start()

    def start(self) -> None:
        """Start the replay task on the running loop (once; a no-op after that).

        Raises:
            RuntimeError: no event loop is running in this thread.
        """
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        if self._closed:
            raise RuntimeError(f"spool {self.journal.directory} is closed")
        self._loop = loop
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._replay_loop(), name=f"spool-{self.service}")

    async def _read(self) -> None:
        """Wait (off the loop) until the journal's files are read (files that could not
        be read leave the spool :attr:`broken`: writes go to the service, none is spooled)."""
        if not self._reading.done():
            with contextlib.suppress(Exception):  # a caller cancelled must not cancel the read
                await asyncio.shield(asyncio.wrap_future(self._reading))
        self.journal.wait_read()  # returns at once

    async def _on_disk(self, operation: Callable[..., T], *args: Any) -> T:
        """Run a journal operation on the I/O thread, off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._io, operation, *args)

    # -- the caller's writes ---------------------------------------------------------

    async def write(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Make the write now, or spool it; returns its result or a :class:`Spooled`."""
        write_id, payload = self._new_write(args, kwargs)  # fails before any call
        if self._closed:
            return await self._write_unkept(write_id, args, kwargs)
        self.start()
        assert self._changed is not None
        await self._read()
        async with self._changed:
            if self._waits_for_drain():
                await self._wait_for_drain()
            if self._joins_spool():
                return await self._keep(write_id, payload, "earlier writes are waiting in the spool", None)
        changed = self._changed

        async def keep(exc: Exception) -> Any:
            async with changed:
                return await self._keep(write_id, payload, str(exc), exc)

        return await self._make_now(write_id, args, kwargs, keep)

    async def _write_unkept(self, write_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A closed spool keeps nothing (another process may own its directory now): as a
        broken one, it makes the write when no spooled write waits, and refuses it with
        ``ResourceExhausted`` (never a receipt) when it waits or fails."""
        if len(self.journal):
            raise self._refused(self._broken_error(), "earlier writes are waiting in the spool")

        async def refuse(exc: Exception) -> Any:
            raise self._refused(self._broken_error(), str(exc)) from exc

        return await self._make_now(write_id, args, kwargs, refuse)

    async def _make_now(
        self,
        write_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        failed: Callable[[Exception], Awaitable[Any]],
    ) -> Any:
        """The write made now; a failure the spool would keep goes to ``failed``."""
        attempts = WriteAttempts()
        try:
            with writing(write_id), tracking(attempts):
                return await self._call(args, kwargs)
        except Exception as exc:
            if not self._spools(exc, attempts):
                raise
            return await failed(exc)

    async def _wait_for_drain(self) -> None:
        """As the sync spool: wait (up to the policy's timeout) for the replay to empty the
        spool, so that new writes do not join it while it drains."""
        assert self._changed is not None
        failures = self._replay_failures
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self._drain_over(failures, self._closed)),
                timeout=self._drain_wait(),
            )

    async def _keep(self, write_id: str, payload: bytes, reason: str, error: Exception | None) -> Spooled:
        """Append (fsync'd, off the loop) while holding the condition: order is kept. The
        write is counted on the I/O thread with its append: a caller cancelled while it
        waits gets no receipt, but the write kept is counted (and replayed)."""

        def append() -> Spooled:
            return self._kept(write_id, self._append(payload), reason)

        try:
            spooled = await self._on_disk(append)
        except JOURNAL_REFUSALS as full:
            raise self._refused(full, reason) from error
        assert self._wake is not None
        self._wake.set()
        return spooled

    # -- replay ----------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        try:
            await self._read()
        except Exception:  # logged; every write is refused with the reason
            _log.exception(
                "spool %s: its files could not be read; nothing is replayed", self.journal.directory
            )
            return
        backoff = self._pause
        while not self._closed:
            try:
                await self._replay_step()
                backoff = self._pause
            except Exception:  # a disk operation failed: the replayer must outlive it
                if self._closed:
                    return
                after = self._replay_error(backoff)
                await asyncio.sleep(backoff)
                backoff = after

    async def _replay_step(self) -> None:
        assert self._wake is not None
        step = self._next_step()
        if step.action == "settle":
            await self._finish()
        elif step.action == "make":
            await self._replay(step.batch)
        elif step.action == "idle":
            await self._on_disk(self._sync_marks)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
        else:
            await self._on_disk(self._sync_marks)
            await asyncio.sleep(step.seconds)

    async def _replay(self, batch: tuple[Record, ...]) -> None:
        assert self._changed is not None
        outcomes = await asyncio.gather(*(self._make(record) for record in batch))
        after = self._made_now(batch, outcomes)
        await self._finish()
        if after.failed:
            async with self._changed:
                self._replay_failures += 1  # the service is failing again: stop holding writes
                self._changed.notify_all()
            await self._on_disk(self._sync_marks)
        if after.pause:
            await asyncio.sleep(after.pause)

    async def _finish(self) -> None:
        """Mark done (off the loop) and count the writes made."""
        assert self._changed is not None
        outcomes = await self._on_disk(self._settle)
        if not len(self.journal):
            async with self._changed:
                self._changed.notify_all()
        self._counted(outcomes)
        await self._on_disk(functools.partial(self._sync_marks, unless_draining=True))

    async def _make(self, record: Record) -> ReplayOutcome:
        """Make one spooled write (see :func:`~.spool_common.replay_outcome`)."""
        write = self._to_make(record)
        if write is None:
            return "dropped"
        write_id, args, kwargs = write
        try:
            with writing(write_id):
                await self._call(args, kwargs)
        except Exception as exc:
            return self._replayed(record, exc)
        return self._replayed(record, None)

    def close(self, timeout: float = 2.0) -> None:
        """Stop replaying (what is left stays on disk for the next process); from any thread."""
        if self._closed:
            return
        self._closed = True
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        self._io.submit(self.journal.close)  # after any journal operation already asked for
        self._io.shutdown(wait=True, cancel_futures=False)
