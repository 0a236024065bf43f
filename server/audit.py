"""Who changed what and why: audit records kept in etcd beside what they describe.

Every write of a policy or breaker key the control plane makes carries one record per key,
written in the same transaction (:meth:`AuditLog.record_writes`): no change without its
record, no record without its change. The record's key is created at the change's
revision, so a change seen in the watch with no record at its revision was made by
someone else (``etcdctl put``); the replicas that see it write one record for it under a
key derived from the revision and the changed key, created only if absent, so several
replicas watching make one record.

Records are kept bounded by count and age (:meth:`AuditLog.prune`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .store import Entry, Store, StoreUnavailable, WatchCompacted, Write

_log = logging.getLogger("mission_control.server.audit")

#: The identity of changes the control plane decides itself, and of changes from outside.
CONTROL_PLANE = "control-plane"
OUTSIDE = "etcd"


@dataclass(frozen=True, slots=True)
class Author:
    """Who asks for a change, and why."""

    identity: str
    reason: str = ""


ENGINE = Author(CONTROL_PLANE)


@dataclass(frozen=True, slots=True)
class Retention:
    """How many records are kept (of policies, and of breakers), and for how long."""

    max_records: int = 1000
    max_age_secs: float = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Change:
    """One key a transaction writes, as the record will tell it."""

    kind: str  # "policy" | "breaker"
    name: str
    old: bytes | None
    new: bytes | None


class AuditLog:
    """Builds, reads and prunes the records under ``<prefix>/audit/``.

    Args:
        store: where records are kept.
        prefix: the control plane's key prefix.
        replica: this replica's id, written in its records.
        retention: the bound on what is kept.
        wall: wall-clock seconds (what is persisted).
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        replica: str = "",
        retention: Retention | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/") + "/audit/"
        self.replica = replica
        self.retention = retention or Retention()
        self.wall = wall
        #: Records written about changes from outside (by this replica).
        self.outside_seen = 0

    def is_record(self, key: str) -> bool:
        return key.startswith(self.prefix)

    # -- writing ---------------------------------------------------------------

    def record_writes(self, changes: Iterable[Change], author: Author, action: str) -> list[Write]:
        """One record per change, to be written in the change's own transaction."""
        now = self.wall()
        stamp = f"{int(now * 1e9):020d}-{secrets.token_hex(4)}"
        writes = []
        for i, change in enumerate(changes):
            record = self._record(change, author, action, now)
            writes.append(Write(f"{self.prefix}{stamp}-{i}", _encode(record), 0))
        return writes

    def _record(self, change: Change, author: Author, action: str, now: float) -> pb.AuditRecord:
        record = pb.AuditRecord(
            identity=author.identity,
            action=action,
            kind=change.kind,
            name=change.name,
            reason=author.reason,
            old_value=(change.old or b"").decode(errors="replace"),
            new_value=(change.new or b"").decode(errors="replace"),
            replica=self.replica,
        )
        record.time.FromNanoseconds(int(now * 1e9))
        return record

    async def record_outside(self, change: Change, revision: int) -> bool:
        """Record a change made from outside at ``revision``; False when another replica
        recorded it first. Raises StoreUnavailable."""
        digest = hashlib.sha256(f"{change.kind}/{change.name}".encode()).hexdigest()[:16]
        key = f"{self.prefix}x{revision:020d}-{digest}"
        action = f"{OUTSIDE}.{'put' if change.new is not None else 'delete'}"
        record = self._record(change, Author(OUTSIDE), action, self.wall())
        record.revision = revision
        result = await self.store.commit([Write(key, _encode(record), 0)])
        self.outside_seen += result.succeeded
        return result.succeeded

    # -- reading ---------------------------------------------------------------

    async def records(self) -> list[pb.AuditRecord]:
        """Every record kept, oldest first. Raises StoreUnavailable."""
        entries, _ = await self.store.get_prefix(self.prefix)
        records = [r for r in (self._parse(e) for e in entries) if r is not None]
        records.sort(key=lambda r: (r.revision, r.id))
        return records

    def _parse(self, entry: Entry) -> pb.AuditRecord | None:
        record = pb.AuditRecord()
        try:
            json_format.Parse(entry.value, record, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, ValueError):
            _log.warning("audit record %s does not parse; skipped", entry.key)
            return None
        record.id = entry.key.removeprefix(self.prefix)
        if not record.revision:  # written with its change: the same revision
            record.revision = entry.mod_revision
        return record

    # -- retention -------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the records past the age bound, and the oldest past the count bound of
        their kind; returns how many.
        Raises StoreUnavailable."""
        entries, _ = await self.store.get_prefix(self.prefix)
        if not entries:
            return 0
        # Only what the bound needs, read cheaply: a full parse of every record on every
        # prune kept the event loop busy long enough, with a full log, to lose the lease.
        parsed = [(e, _brief(e)) for e in entries]
        oldest_ns = (self.wall() - self.retention.max_age_secs) * 1e9
        doomed = [e.key for e, r in parsed if r is None or r[2] < oldest_ns]
        gone = set(doomed)
        # Bounded per kind: a flapping breaker does not push the policy changes out.
        for kind in ("policy", "breaker"):
            kept = sorted((r[1], e.key) for e, r in parsed if r is not None and r[0] == kind)
            excess = len(kept) - self.retention.max_records
            doomed += [key for _, key in kept[: max(0, excess)] if key not in gone]
        for start in range(0, len(doomed), 64):  # etcd bounds the operations of a transaction
            await self.store.commit([Write(key, None) for key in doomed[start : start + 64]])
        return len(doomed)


def _brief(entry: Entry) -> tuple[str, int, int] | None:
    """A stored record's (kind, revision, time in ns) — None when it does not parse."""
    try:
        data = json.loads(entry.value)
        stamp = Timestamp()
        if data.get("time"):
            stamp.FromJsonString(data["time"])
        return (
            str(data.get("kind", "")),
            int(data.get("revision") or entry.mod_revision),
            stamp.ToNanoseconds(),
        )
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def _encode(record: pb.AuditRecord) -> bytes:
    return json_format.MessageToJson(record, preserving_proto_field_name=True, indent=None).encode()


def value_of(text: str) -> bytes | None:
    """A record's value as stored (None: absent)."""
    return text.encode() if text else None


class AuditKeeper:
    """The background part: records changes seen from outside, and keeps the bound.

    Args:
        log: the records.
        change_of: what a write of a key changes (None: not a policy or breaker key).
        prune_delay: seconds between a recorded write and the pruning it triggers, so a
            burst of writes is pruned once.
    """

    def __init__(
        self,
        log: AuditLog,
        change_of: Callable[[str, bytes | None, bytes | None], Change | None],
        prune_delay: float = 0.2,
        prune_interval: float = 5.0,
    ) -> None:
        self.log = log
        self.change_of = change_of
        self.prune_delay = prune_delay
        #: Seconds at least between two prunes: the bound may be passed for that long.
        self.prune_interval = prune_interval
        self._prune = asyncio.Event()
        self._outside: asyncio.Queue[tuple[str, bytes | None, int]] = asyncio.Queue(maxsize=10_000)
        #: Changes from outside handled here (recorded here or by another replica).
        self.outside_changes = 0
        self.pruned = 0

    def recorded(self) -> None:
        """A record was written: prune soon."""
        self._prune.set()

    def outside(self, key: str, value: bytes | None, revision: int) -> None:
        """``key`` changed at ``revision`` with no record beside it: record it."""
        if self.change_of(key, value, None) is None:
            return
        with contextlib.suppress(asyncio.QueueFull):  # beyond: the watch reload catches up
            self._outside.put_nowait((key, value, revision))

    async def run(self) -> None:
        await asyncio.gather(self._prune_loop(), self._outside_loop())

    async def _prune_loop(self) -> None:
        self._prune.set()  # what an earlier run left beyond the bound
        while True:
            await self._prune.wait()
            await asyncio.sleep(self.prune_delay)
            self._prune.clear()
            try:
                self.pruned += await self.log.prune()
            except StoreUnavailable as err:
                _log.info("audit records not pruned yet (%s)", err)
                self._prune.set()
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(self.prune_interval)

    async def _outside_loop(self) -> None:
        while True:
            key, value, revision = await self._outside.get()
            for attempt in range(5):
                try:
                    await self._record_outside(key, value, revision)
                    break
                except StoreUnavailable as err:
                    _log.info("change of %s at %d not recorded yet (%s)", key, revision, err)
                    await asyncio.sleep(0.2 * 2**attempt)
            self._prune.set()

    async def _record_outside(self, key: str, value: bytes | None, revision: int) -> None:
        try:
            before = await self.log.store.get(key, revision=revision - 1)
        except WatchCompacted:
            before = None
        change = self.change_of(key, value, before.value if before is not None else None)
        if change is None:
            return
        text = "%s %s changed from outside the control plane (revision %d)%s"
        if await self.log.record_outside(change, revision):
            _log.warning(text, change.kind, change.name, revision, "")
        else:
            _log.info(text, change.kind, change.name, revision, ": recorded by another replica")
        self.outside_changes += 1
