"""Durable degraded mode for writes: a write the service cannot take now is kept on local
disk (:mod:`.journal`) and made later, in order, when the service serves again.

``mc.guard("storage_backend", spool="/var/lib/agent/spool")`` on a sync function: a call
refused by the breaker or a limit, or failed after its retries without any attempt that
may have reached the service (:mod:`.write_attempts`; any, for an ``idempotent`` guard), is
spooled and returns a :class:`Spooled` receipt instead of raising. While writes wait in
the spool, new ones join the end of it (order is kept) — once the breaker lets calls
through, after waiting up to the policy's timeout for the replay to empty the spool (so
that it drains under load: a new write is made directly once it is empty). A background
thread replays the oldest write whenever the breaker lets calls through (its first replays
are the HALF_OPEN probes) and marks it done.

What is guaranteed: a write that returned :class:`Spooled` is on disk (fsync'd) and is made
at least once, in order, by this process or the next one that opens the directory — unless
the spool drops it at its bound (counted, and the caller gets the error instead of a
receipt). A write is marked done only after it succeeded, so a process killed between the
upstream's success and that mark makes that one write again: at most one write per crash
is made twice. Every write has an id (:func:`current_write_id`, the same on its first try
and on every replay) that the upstream can use to apply it exactly once.
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ResourceExhausted
from .journal import Journal, JournalBroken, JournalFull
from .outcomes import DEFAULT, Counts, Outcomes, classify, kind_of
from .write_attempts import WriteAttempts, tracking

__all__ = ["Spooled", "WriteSpool", "current_write_id"]

_log = logging.getLogger("mission_control.client.spool")

#: The longest wait of the replayer between tries after a disk operation failed.
MAX_REPLAY_BACKOFF = 5.0

_write_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mission_control_write_id", default=None
)


def current_write_id() -> str | None:
    """The id of the spool-backed write being made (inside the protected function), the
    same on its first try and on every replay: send it to the upstream so it can drop a
    write it has already applied. None outside such a write."""
    return _write_id.get()


@contextmanager
def _writing(write_id: str) -> Iterator[None]:
    token = _write_id.set(write_id)
    try:
        yield
    finally:
        _write_id.reset(token)


@dataclass(frozen=True, slots=True)
class Spooled:
    """A write kept in the spool instead of made now; it will be made, in order.

    Attributes:
        write_id: the write's id (see :func:`current_write_id`).
        seq: its place in the spool.
        reason: why it was not made now.
    """

    write_id: str
    seq: int
    reason: str


def _to_json(value: Any, where: str, bad: list[str]) -> Any:
    """``value`` as JSON that :func:`_from_json` turns back into an equal value: tuples and
    bytes are tagged, as are dicts with a key that starts with ``$`` (a tag's look)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            bad.append(f"{where} is {value!r} (JSON has no such number)")
        return value
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        items = [_to_json(item, f"{where}[{i}]", bad) for i, item in enumerate(value)]
        return items if isinstance(value, list) else {"$tuple": items}
    if isinstance(value, dict):
        keys = [key for key in value if not isinstance(key, str)]
        if keys:
            bad.append(f"{where} has keys that are not strings ({', '.join(map(repr, keys[:3]))})")
            return None
        pairs = {key: _to_json(item, f"{where}[{key!r}]", bad) for key, item in value.items()}
        if any(key.startswith("$") for key in pairs):
            return {"$dict": [[key, item] for key, item in pairs.items()]}
        return pairs
    bad.append(f"{where} is a {type(value).__name__}")
    return None


def _from_json(value: dict[str, Any]) -> Any:
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "$bytes":
            return base64.b64decode(inner)
        if tag == "$tuple":
            return tuple(inner)
        if tag == "$dict":
            return {key: item for key, item in inner}
    return value


def encode_write(write_id: str, function: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A write as a journal payload; what :func:`decode_write` gives back equals it.

    Raises:
        TypeError: an argument JSON values, bytes and tuples cannot hold (all are named).
    """
    bad: list[str] = []
    record = {
        "id": write_id,
        "fn": function,
        "args": [_to_json(arg, f"args[{i}]", bad) for i, arg in enumerate(args)],
        "kwargs": _to_json(kwargs, "kwargs", bad),
    }
    if bad:
        raise TypeError(
            "a spooled write's arguments must be JSON values or bytes (lists, tuples, dicts "
            f"with string keys of them): {'; '.join(bad)}"
        )
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def decode_write(payload: bytes) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    record = json.loads(payload, object_hook=_from_json)
    return record["id"], record["fn"], tuple(record["args"]), dict(record["kwargs"])


@dataclass(slots=True)
class _Target:
    service: str
    operation: str
    kind: str
    timeout: float = 0.0


class WriteSpool:
    """The spool of one protected write function (see the module's rules).

    Args:
        directory: the spool's directory (one function, one process at a time).
        service / function: the service written to, and the function's name (checked
            against the spooled writes, so a directory is not replayed into another one).
        call: makes one write under the service's policy: ``call(args, kwargs)``.
        open_for: seconds the service's breaker stays open (0: calls may go).
        count: ``count(spooled, replayed, dropped)`` adds to the service's counts.
        outcomes: how the write's exceptions count (a failure of the service is spooled).
        drain_wait: how long a new write may wait for the replayer to empty the spool
            while the service serves (the policy's timeout), before it is spooled.
        idempotent: a write may be made twice: spool it even when an attempt may have
            reached the service (see :mod:`.write_attempts`).
    """

    def __init__(
        self, directory: str | Path, *, service: str, function: str,
        call: Callable[[tuple[Any, ...], dict[str, Any]], Any], open_for: Callable[[], float],
        count: Callable[[int, int, int], None], outcomes: Outcomes | None = None,
        kind: str | None = None, max_writes: int = 10_000, max_bytes: int = 64 * 1024 * 1024,
        pause: float = 0.2, idempotent: bool = False, drain_wait: Callable[[], float] = lambda: 0.0,
    ) -> None:  # fmt: skip
        self.journal = Journal(directory, max_records=max_writes, max_bytes=max_bytes)
        self.service = service
        self.function = function
        self._call = call
        self._open_for = open_for
        self._count = count
        self._outcomes = outcomes or DEFAULT
        self._target = _Target(service, function, kind or kind_of(service))
        self._pause = pause
        self._idempotent = idempotent
        self._drain_wait = drain_wait
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # the spool emptied, or replay failed
        self._replay_failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.spooled = self.replayed = self.dropped = 0
        if self.journal.corrupt:  # kept, then lost on disk: they will never be made
            self.dropped += self.journal.corrupt
            count(0, 0, self.journal.corrupt)
        self._unmarked: tuple[int, str] | None = None  # made or dropped, its done mark not written
        self._stalled: str | None = None
        self._thread = threading.Thread(target=self._replay_loop, name=f"spool-{service}", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Writes waiting in the spool."""
        with self._lock:
            return len(self.journal)

    # -- the caller's writes ---------------------------------------------------------

    def write(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Make the write now, or spool it; returns its result or a :class:`Spooled`."""
        write_id = uuid.uuid4().hex
        payload = encode_write(write_id, self.function, args, kwargs)  # fails before any call
        with self._lock:
            if len(self.journal) and self._open_for() <= 0:
                self._wait_for_drain()
            if len(self.journal):
                return self._keep(write_id, payload, "earlier writes are waiting in the spool", None)
        attempts = WriteAttempts()
        try:
            with _writing(write_id), tracking(attempts):
                return self._call(args, kwargs)
        except Exception as exc:
            if not self._service_failed(exc):
                raise
            if attempts.maybe_applied and not self._idempotent:
                exc.add_note(
                    "not spooled: an attempt may have reached the service (it timed out or failed "
                    "after sending), and a replay could make the write twice; mark the guard "
                    "idempotent to spool such writes"
                )
                raise
            with self._lock:
                return self._keep(write_id, payload, str(exc), exc)

    def _wait_for_drain(self) -> None:
        """The service serves again and the replayer is catching up: wait (up to the
        policy's timeout) for the spool to empty, then make the write at once. New writes
        are held back instead of joining the spool, so it drains under any load; a write
        that would wait longer is spooled."""
        failures = self._replay_failures
        self._drained.wait_for(
            lambda: not len(self.journal) or failures != self._replay_failures or self._stop.is_set(),
            timeout=self._drain_wait(),
        )

    @property
    def broken(self) -> str | None:
        """Why the spool hands out no receipts now (None: it does): its journal cannot keep
        records, or a done mark could not be written (the replayer tries it again)."""
        return self._stalled or self.journal.broken

    def _keep(self, write_id: str, payload: bytes, reason: str, error: Exception | None) -> Spooled:
        try:
            if self.broken:
                raise JournalBroken(f"spool {self.journal.directory} is broken: {self.broken}")
            seq = self.journal.append(payload)
        except (JournalFull, JournalBroken) as full:
            self.dropped += 1
            self._count(0, 0, 1)
            # Not the service's error: a StorageFailure would tell the user the data is safe.
            refused = ResourceExhausted(
                f"{self.service} write spool", len(self.journal), self.journal.max_records
            )
            refused.add_note(f"not spooled: {full}; the write was not made ({reason})")
            raise refused from error
        self.spooled += 1
        self._count(1, 0, 0)
        self._wake.set()
        return Spooled(write_id, seq, reason)

    def _service_failed(self, exc: BaseException) -> bool:
        return classify(self._target, exc, self._outcomes).counts is Counts.FAILURE

    # -- replay ----------------------------------------------------------------------

    def _replay_loop(self) -> None:
        backoff = self._pause
        while not self._stop.is_set():
            try:
                self._replay_step()
                backoff = self._pause
            except Exception:  # a disk operation failed: the replayer must outlive it
                where = self.journal.directory
                _log.exception("spool %s: replay failed; trying again in %.1fs", where, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_REPLAY_BACKOFF)

    def _replay_step(self) -> None:
        if self._unmarked is not None:
            self._finish(*self._unmarked)  # before anything else: the write is not made twice
            return
        with self._lock:
            record = self.journal.first()
        if record is None:
            self._wake.wait(1.0)
            self._wake.clear()
            return
        wait = self._open_for()
        if wait > 0:
            self._stop.wait(min(wait, 1.0))
            return
        if not self._replay(record.seq, record.payload):
            with self._lock:
                self._replay_failures += 1  # the service is failing again: stop holding writes
                self._drained.notify_all()
            self._stop.wait(self._pause)

    def _finish(self, seq: int, outcome: str) -> None:
        """Mark ``seq`` done and count it; when the mark fails, hand out no receipts until it
        is written (the journal would make the write again) and raise."""
        with self._lock:
            try:
                self.journal.mark_done(seq)
            except OSError as exc:
                self._unmarked = (seq, outcome)
                self._stalled = f"write #{seq} was {outcome} but could not be marked done ({exc})"
                raise
            self._unmarked = self._stalled = None
            if not len(self.journal):
                self._drained.notify_all()
            if outcome == "replayed":
                self.replayed += 1
            else:
                self.dropped += 1
        self._count(0, int(outcome == "replayed"), int(outcome == "dropped"))

    def _replay(self, seq: int, payload: bytes) -> bool:
        """Make one spooled write; False when the service failed it (try again later)."""
        try:
            write_id, function, args, kwargs = decode_write(payload)
        except (ValueError, KeyError, TypeError):
            return self._drop(seq, "it cannot be read")
        if function != self.function:
            return self._drop(seq, f"it was spooled by {function!r}, not {self.function!r}")
        try:
            with _writing(write_id):
                self._call(args, kwargs)
        except Exception as exc:
            if self._service_failed(exc):
                return False
            return self._drop(seq, f"the write failed with the caller's error {exc!r}")
        self._finish(seq, "replayed")
        return True

    def _drop(self, seq: int, why: str) -> bool:
        """A write that can never be made is dropped, not retried for ever."""
        _log.error("spool %s: dropping write #%d: %s", self.journal.directory, seq, why)
        self._finish(seq, "dropped")
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stop replaying (what is left stays on disk for the next process)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._drained.notify_all()
        self._thread.join(timeout)
        with self._lock:
            self.journal.close()
