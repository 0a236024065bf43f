"""Who changed what and why: audit records, kept in etcd outside the prefix the control
plane loads.

Every write of a policy, candidate (shadow) or breaker key the control plane makes
carries, in the same transaction, one record per key under ``<prefix>-audit/<kind>/``
and a *mark* beside the key under ``<prefix>/audited/`` that names the record (a
deleted key keeps its mark, ``-`` before the record's key). The mark is at the change's
revision: a change seen in the watch without a mark at its revision, or a key whose
revision is not its mark's after a start, was made by someone else (``etcdctl put``)
and is recorded as ``etcd`` (see :mod:`.audit_keeper`).

A record's key holds the inverted time of the change, so etcd's ascending range with a
limit — the one range it answers without reading the whole range first — reads the
newest first; the age bound is one range deletion, the count bound a count and one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .audit_read import IMPORTS, AuditReader, bucket_end, encode, invert
from .store import Store, Write

#: The identity of changes the control plane decides itself, and of changes from outside.
CONTROL_PLANE = "control-plane"
OUTSIDE = "etcd"
#: Import bundles kept (each holds what one config import replaced, for its rollback).
MAX_IMPORTS_KEPT = 100


@dataclass(frozen=True, slots=True)
class Author:
    """Who asks for a change, and why."""

    identity: str
    reason: str = ""


ENGINE = Author(CONTROL_PLANE)


@dataclass(frozen=True, slots=True)
class Retention:
    """How many records are kept of each kind, and for how long."""

    max_records: int = 1000
    max_age_secs: float = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Change:
    """One key a transaction writes, as the record will tell it."""

    kind: str  # "policy" | "breaker" | "shadow"
    name: str
    old: bytes | None
    new: bytes | None
    #: The key written (its mark is written beside it); empty: no mark.
    key: str = ""
    #: The key's etcd version after the change (0: not known).
    version: int = 0


class AuditLog(AuditReader):
    """Builds, reads and prunes the records under ``<prefix>-audit/``.

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
        super().__init__(store, prefix)
        self.replica = replica
        self.retention = retention or Retention()
        self.wall = wall
        #: Records written about changes from outside (by this replica).
        self.outside_seen = 0

    # -- writing ---------------------------------------------------------------

    def record_writes(self, changes: Iterable[Change], author: Author, action: str) -> list[Write]:
        """One record and one mark per change, to be written in the change's own
        transaction; a config import also gets its bundle (what it replaced, whole)."""
        now = self.wall()
        tail = secrets.token_hex(4)
        writes, done = [], []
        for i, change in enumerate(changes):
            key = self.record_key(change.kind, now, f"{tail}-{i:03d}")
            writes.append(Write(key, encode(self._record(change, author, action, now)), 0))
            if change.key:
                writes.append(self.mark_write(change, key, None))
            done.append(change)
        if action == "config.import" and done:
            bundle = self._bundle(done, author, action, now)
            writes.append(Write(self.record_key(IMPORTS, now, tail), encode(bundle), 0))
        return writes

    def record_key(self, kind: str, now: float, tail: str) -> str:
        return f"{self.bucket(kind)}{invert(int(now * 1e9))}-{tail}"

    def mark_write(self, change: Change, record_key: str, expected: int | None, revision: int = 0) -> Write:
        """The mark of ``change``'s key, naming its record (and ``revision``, the change's,
        when it is recorded after it was made)."""
        value = record_key if change.new is not None else f"-{record_key}"
        return Write(
            self.mark_of(change.key), f"{value} {revision}".encode() if revision else value.encode(), expected
        )

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
            version=change.version,
        )
        record.time.FromNanoseconds(int(now * 1e9))
        return record

    def _bundle(self, changes: list[Change], author: Author, action: str, now: float) -> pb.AuditRecord:
        """What one import replaced, every policy in one record: its rollback never
        finds part of it pruned."""
        old = {c.name: (c.old.decode(errors="replace") if c.old else None) for c in changes}
        record = self._record(Change(IMPORTS, ",".join(sorted(old)), None, None), author, action, now)
        record.old_value = json.dumps(old, sort_keys=True)
        return record

    async def record_outside(
        self,
        change: Change,
        revision: int,
        mark_revision: int,
        *,
        refused: bool = False,
        also: Callable[[str], list[Write]] = lambda record: [],
    ) -> bool:
        """Record a change made from outside at ``revision`` (0: unknown; the key's etcd
        version after it in ``change``), in a compare-and-swap on its key's mark as last
        seen (``mark_revision``, 0: none);
        False when another replica, or a later write, recorded first. A value the control
        plane ``refused`` (never in force) is recorded as ``etcd.refused``; ``also``: more
        writes of the same transaction, given the record's key.
        Raises StoreUnavailable."""
        now = self.wall()
        key = self.record_key(change.kind, now, secrets.token_hex(4))
        verb = "refused" if refused else "put" if change.new is not None else "delete"
        action = f"{OUTSIDE}.{verb}"
        record = self._record(change, Author(OUTSIDE), action, now)
        record.revision = revision
        writes = [Write(key, encode(record), 0), self.mark_write(change, key, mark_revision, revision)]
        writes += also(key)
        result = await self.store.commit(writes)
        self.outside_seen += result.succeeded
        return result.succeeded

    # -- retention -------------------------------------------------------------

    async def prune(self, kept: Callable[[], Awaitable[frozenset[str]]] | None = None) -> int:
        """Delete the records past the age bound, and the oldest past the count bound of
        their kind (a flapping breaker does not push the policy changes out), but those
        ``kept`` names (see :mod:`.audit_kept`), whatever their age; returns how many. Two
        counts per kind when nothing is past a bound; else what is kept is read once and
        the keys past the bound too. Raises StoreUnavailable."""
        oldest_ns = int((self.wall() - self.retention.max_age_secs) * 1e9)
        keep: frozenset[str] | None = None if kept is not None else frozenset()

        async def keeping() -> frozenset[str]:
            nonlocal keep
            if keep is None:
                keep = await kept()  # type: ignore[misc]
            return keep

        deleted = 0
        for kind, most in self.bounds():
            bucket, end = self.bucket(kind), bucket_end(self.bucket(kind))
            aged = bucket + invert(oldest_ns)  # older: every key from the bound's inverted time on
            if oldest_ns > 0 and await self.store.count(aged, end):
                deleted += await self._delete(aged, end, await keeping())
            if await self.store.count(bucket, end) > most:
                # past the newest ``most``, the first not kept (one is among as many more
                # as are kept, if any is)
                held = sum(1 for key in await keeping() if key.startswith(bucket))
                newest, _ = await self.store.scan(bucket, end, most + held + 1, keys_only=True)
                past = [e.key for e in newest[most:] if e.key not in await keeping()]
                if past:
                    deleted += await self._delete(past[0], end, await keeping())
        return deleted

    async def _delete(self, start: str, end: str, keep: frozenset[str]) -> int:
        """Delete the keys of ``[start, end)`` but those in ``keep``."""
        if not any(start <= key < end for key in keep):
            return await self.store.delete_range(start, end)
        runs: list[list[str]] = []  # [first, last] of each run of keys not kept
        more, after = True, start
        while more:
            entries, more = await self.store.scan(after, end, 500, keys_only=True)
            for entry in entries:
                if entry.key in keep:
                    runs.append([])
                elif runs and runs[-1]:
                    runs[-1][1] = entry.key
                else:
                    runs.append([entry.key, entry.key])
            after = entries[-1].key + "\0" if entries else end
        deleted = 0
        for run in runs:
            if run:
                deleted += await self.store.delete_range(run[0], run[1] + "\0")
        return deleted

    def bounds(self) -> list[tuple[str, int]]:
        return [*((k, self.retention.max_records) for k in self.kinds), (IMPORTS, MAX_IMPORTS_KEPT)]

    # -- before records left the loaded prefix ---------------------------------

    async def move_legacy(self) -> int:
        """Move the records an earlier version kept under ``<prefix>/audit/`` (which every
        replica loads whole) to where they are kept now; returns how many.
        Raises StoreUnavailable."""
        entries, _ = await self.store.get_prefix(self.legacy_prefix)
        moved = 0
        for start in range(0, len(entries), 32):  # etcd bounds the operations of a transaction
            writes, keys = [], []
            for entry in entries[start : start + 32]:
                record = self.parse(entry, self.legacy_prefix)
                if record is not None and record.kind in self.kinds:
                    tail = hashlib.sha256(entry.key.encode()).hexdigest()[:8]
                    key = self.record_key(record.kind, record.time.ToNanoseconds() / 1e9, f"{tail}-m")
                    writes.append(Write(key, encode(_kept(record)), 0))
                    keys.append(key)
                writes.append(Write(entry.key, None, entry.mod_revision))
            # What a control plane moved, at that revision: read back as its own records.
            writes.append(Write(self.moved_key, " ".join(keys).encode(), None))
            moved += len(keys) if (await self.store.commit(writes)).succeeded else 0
        return moved


def _kept(record: pb.AuditRecord) -> pb.AuditRecord:
    kept = pb.AuditRecord()
    kept.CopyFrom(record)
    kept.ClearField("id")
    kept.ClearField("provenance")
    return kept


__all__ = ["CONTROL_PLANE", "OUTSIDE", "AuditLog", "Author", "Change", "Retention"]
