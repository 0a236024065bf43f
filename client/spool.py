"""Durable degraded mode for writes: a write the service cannot take now is kept on local
disk (:mod:`.journal`) and made later, in order, when the service serves again.

``mc.guard("storage_backend", spool="/var/lib/agent/spool")`` on a sync function (an
``async def`` one gets :mod:`.spool_aio`, with the same rules and the same journal format):
a call refused by the breaker or a limit, or failed after its retries without any attempt
that may have reached the service (:mod:`.write_attempts`; any, for an ``idempotent``
guard), is spooled and returns a :class:`Spooled` receipt instead of raising. While writes
wait in the spool, new ones join the end of it (order is kept) — once the breaker lets
calls through, after waiting up to the policy's timeout for the replay to empty the spool
(so that it drains under load: a new write is made directly once it is empty). A
background thread replays the oldest write whenever the breaker lets calls through (its
first replays are the HALF_OPEN probes) and marks it done.

What is guaranteed: a write that returned :class:`Spooled` is on disk (fsync'd) and is made
at least once, in order, by this process or the next one that opens the directory — unless
the spool drops it at its bound (counted, and the caller gets the error instead of a
receipt). A write is marked done only after it succeeded, so a process killed between the
upstream's success and that mark makes that one write again: at most one write per crash
is made twice. Every write has an id (:func:`current_write_id`, the same on its first try
and on every replay) that the upstream can use to apply it exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .journal import Record
from .spool_common import (
    JOURNAL_REFUSALS,
    ReplayOutcome,
    SpoolCore,
    Spooled,
    current_write_id,
    decode_write,
    encode_write,
    write_id_metadata,
    writing,
)
from .write_attempts import WriteAttempts, tracking

__all__ = ["Spooled", "WriteSpool", "current_write_id", "decode_write", "encode_write", "write_id_metadata"]


class WriteSpool(SpoolCore):
    """The spool of one protected sync write function (see the module's rules).

    Args:
        call: makes one write under the service's policy: ``call(args, kwargs)``.
        the rest: as :class:`~.spool_common.SpoolCore`.
    """

    def __init__(
        self, directory: str | Path, *, call: Callable[[tuple[Any, ...], dict[str, Any]], Any], **options: Any
    ) -> None:  # fmt: skip
        super().__init__(directory, **options)
        self._call = call
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # the spool emptied, or replay failed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._workers: ThreadPoolExecutor | None = None  # for writes replayed at once
        self._thread = threading.Thread(target=self._replay_loop, name=f"spool-{self.service}", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Writes waiting in the spool."""
        with self._lock:
            return len(self.journal)

    # -- the caller's writes ---------------------------------------------------------

    def write(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Make the write now, or spool it; returns its result or a :class:`Spooled`."""
        write_id, payload = self._new_write(args, kwargs)
        with self._lock:
            if self._waits_for_drain():
                self._wait_for_drain()
            if self._joins_spool():
                return self._keep(write_id, payload, "earlier writes are waiting in the spool", None)

        def keep(exc: Exception) -> Spooled:
            with self._lock:
                return self._keep(write_id, payload, str(exc), exc)

        return self._make_now(write_id, args, kwargs, keep)

    def _make_now(
        self, write_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], failed: Callable[[Exception], Any]
    ) -> Any:
        """The write made now; a failure the spool would keep goes to ``failed`` (as in the
        asyncio spool, where a closed spool refuses it instead)."""
        attempts = WriteAttempts()
        try:
            with writing(write_id), tracking(attempts):
                return self._call(args, kwargs)
        except Exception as exc:
            if not self._spools(exc, attempts):
                raise
            return failed(exc)

    def _wait_for_drain(self) -> None:
        """The service serves again and the replayer is catching up: wait (up to the
        policy's timeout) for the spool to empty, then make the write at once. New writes
        are held back instead of joining the spool, so it drains under any load; a write
        that would wait longer is spooled."""
        failures = self._replay_failures
        self._drained.wait_for(
            lambda: self._drain_over(failures, self._stop.is_set()), timeout=self._drain_wait()
        )

    def _keep(self, write_id: str, payload: bytes, reason: str, error: Exception | None) -> Spooled:
        try:
            seq = self._append(payload)
        except JOURNAL_REFUSALS as full:
            raise self._refused(full, reason) from error
        self._wake.set()
        return self._kept(write_id, seq, reason)

    # -- replay ----------------------------------------------------------------------

    def _replay_loop(self) -> None:
        backoff = self._pause
        while not self._stop.is_set():
            try:
                self._replay_step()
                backoff = self._pause
            except Exception:  # a disk operation failed: the replayer must outlive it
                if self._stop.is_set():  # closed: the journal refuses to write
                    return
                after = self._replay_error(backoff)
                self._stop.wait(backoff)
                backoff = after

    def _replay_step(self) -> None:
        with self._lock:
            step = self._next_step()
        if step.action == "settle":
            self._finish()
        elif step.action == "make":
            self._replay(step.batch)
        elif step.action == "idle":
            self._sync_marks()
            self._wake.wait(1.0)
            self._wake.clear()
        else:
            self._sync_marks()
            self._stop.wait(step.seconds)

    def _replay(self, batch: tuple[Record, ...]) -> None:
        outcomes = self._make_all(batch)
        with self._lock:
            after = self._made_now(batch, outcomes)
        self._finish()
        if after.failed:
            with self._lock:
                self._replay_failures += 1  # the service is failing again: stop holding writes
                self._drained.notify_all()
            self._sync_marks()
        if after.pause:
            self._stop.wait(after.pause)

    def _make_all(self, batch: tuple[Record, ...]) -> list[ReplayOutcome]:
        if len(batch) == 1:
            return [self._make(batch[0])]
        if self._workers is None:
            self._workers = ThreadPoolExecutor(self._parallel, thread_name_prefix=f"spool-{self.service}")
        return list(self._workers.map(self._make, batch))

    def _finish(self) -> None:
        """Mark done and count the writes made (see :meth:`SpoolCore._settle`)."""
        with self._lock:
            outcomes = self._settle()
            if not len(self.journal):
                self._drained.notify_all()
        self._counted(outcomes)
        self._sync_marks(unless_draining=True)

    def _make(self, record: Record) -> ReplayOutcome:
        """Make one spooled write (see :func:`~.spool_common.replay_outcome`)."""
        write = self._to_make(record)
        if write is None:
            return "dropped"
        write_id, args, kwargs = write
        try:
            with writing(write_id):
                self._call(args, kwargs)
        except Exception as exc:
            return self._replayed(record, exc)
        return self._replayed(record, None)

    def close(self, timeout: float = 2.0) -> None:
        """Stop replaying (what is left stays on disk for the next process)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._drained.notify_all()
        self._thread.join(timeout)
        if self._workers is not None:
            self._workers.shutdown(wait=False)
        with self._lock:
            self.journal.close()
