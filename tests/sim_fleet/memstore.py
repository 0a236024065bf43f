"""An in-memory etcd for the simulation, with the faults etcd has in production.

:class:`MemEtcd` is the cluster: keys with create/mod revisions and leases, a history of
every change (reads at a revision, watches from a revision, compaction), leases that expire
on the loop's clock. Faults are switches on it: ``unavailable`` (every request fails at
once), ``paused`` (requests hang until it resumes or the client's timeout ends them, while
leases keep expiring), :meth:`wipe` (a new empty cluster at revision 1), :meth:`put_raw`
(garbage under a key, as ``etcdctl put`` would), and slow commits (a transaction is applied
after one random delay and answered after another: answers come back in another order than
the writes were applied, or not at all when the client gave up first).

Each replica talks to it through its own :class:`MemStore` (the ``Store`` interface), which
can be cut off alone (a partition between that replica and etcd).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from mission_control.server.loop_tasks import wait_event
from mission_control.server.store import (
    Entry,
    Guard,
    StoreStatus,
    StoreUnavailable,
    TxnResult,
    WatchCompacted,
    WatchEvent,
    Write,
)

#: The client's bound on one request (EtcdStore's default).
TIMEOUT = 2.0


@dataclass
class _Key:
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0
    #: Writes since it was created (etcd's ``version``).
    version: int = 1


@dataclass(frozen=True)
class Change:
    """One key's change at one revision (value None = deleted), and when it happened."""

    revision: int
    key: str
    value: bytes | None
    at: float


@dataclass
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


class MemEtcd:
    """The cluster's state and its faults. All randomness comes from ``rng``."""

    def __init__(self, rng: random.Random, *, cluster_id: int = 0xE7CD) -> None:
        self.rng = rng
        self.cluster_id = cluster_id
        self.revision = 1
        self.compacted = 0
        self.keys: dict[str, _Key] = {}
        self.history: list[Change] = []
        self.leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self.unavailable = False
        self.paused = False
        #: Upper bound of the random delay before a commit applies and before it answers.
        self.slow = 0.0
        self.wipes = 0
        self._changed = asyncio.Event()

    # -- time and notification -------------------------------------------------

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        # (not asyncio.wait_for: before Python 3.12 it swallows a cancel that arrives as
        # the change does, and a replica crashed in that step would live on)
        await wait_event(self._changed, timeout)

    # -- faults ------------------------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._notify()

    def set_unavailable(self, unavailable: bool) -> None:
        self.unavailable = unavailable
        self._notify()

    def wipe(self, *, new_cluster: bool = True) -> None:
        """Lose everything: revision 1, no keys, no leases, no history (watches end)."""
        self.wipes += 1
        self.revision = 1
        self.compacted = 0
        self.keys.clear()
        self.history.clear()
        self.leases.clear()
        if new_cluster:
            self.cluster_id += 1
        self._notify()

    def compact(self, revision: int) -> None:
        """Drop the history up to ``revision``, as etcd does: each key's value then (its
        last change up to it, unless a deletion) stays, readable at every later revision."""
        revision = min(revision, self.revision)
        self.compacted = max(self.compacted, revision)
        last = {c.key: c for c in self.history if c.revision <= self.compacted}
        kept = sorted((c for c in last.values() if c.value is not None), key=lambda c: c.revision)
        self.history = kept + [c for c in self.history if c.revision > self.compacted]
        self._notify()

    def fingerprint(self) -> str:
        """The keys, values and revisions the cluster holds now, as one short hash."""
        held = hashlib.sha256(f"{self.cluster_id} {self.revision}".encode())
        for key in sorted(self.keys):
            entry = self.keys[key]
            held.update(f"\n{key} {entry.mod_revision} {entry.lease} ".encode() + entry.value)
        return held.hexdigest()[:16]

    def put_raw(self, key: str, value: bytes) -> None:
        """A write from outside the control plane (an operator's etcdctl)."""
        self._apply([Write(key, value)])

    # -- the operations ----------------------------------------------------------

    async def gate(self) -> None:
        """What every request goes through: fails when unavailable, hangs while paused."""
        await asyncio.sleep(self.rng.uniform(0, 0.003))
        deadline = self.now + TIMEOUT
        while True:
            if self.unavailable:
                raise StoreUnavailable("etcd: connection refused")
            if not self.paused:
                return
            if self.now >= deadline:
                raise StoreUnavailable("etcd: deadline exceeded")
            await self.wait_change(deadline - self.now)

    def read(self, key: str, revision: int) -> Entry | None:
        if not revision or revision >= self.revision:
            found = self.keys.get(key)
            if found is None:
                return None
            return Entry(
                key, found.value, found.mod_revision, found.create_revision, found.lease, found.version
            )
        if revision <= self.compacted:
            raise WatchCompacted(self.compacted)
        state: Entry | None = None
        create = 0
        for change in self.history:
            if change.revision > revision:
                break
            if change.key != key:
                continue
            if change.value is None:
                state, create = None, 0
            else:
                create = create or change.revision
                state = Entry(key, change.value, change.revision, create)
        return state

    def txn(self, writes: Sequence[Write], guards: Sequence[Guard]) -> TxnResult:
        ok = all(
            self._create_rev(g.key) == g.create_revision and (not g.lease or self._lease_of(g.key) == g.lease)
            for g in guards
        )
        ok = ok and all(
            self._mod_rev(w.key) == w.expected_revision for w in writes if w.expected_revision is not None
        )
        if ok:
            for write in writes:
                if write.lease and write.lease not in self.leases:
                    raise StoreUnavailable("etcd: requested lease not found")
            self._apply(writes)
            return TxnResult(True, self.revision)
        watched = list(dict.fromkeys([*(g.key for g in guards), *(w.key for w in writes)]))
        return TxnResult(False, self.revision, {k: self.read(k, 0) for k in watched})

    def _create_rev(self, key: str) -> int:
        found = self.keys.get(key)
        return found.create_revision if found else 0

    def _lease_of(self, key: str) -> int:
        found = self.keys.get(key)
        return found.lease if found else 0

    def _mod_rev(self, key: str) -> int:
        found = self.keys.get(key)
        return found.mod_revision if found else 0

    def _apply(self, writes: Sequence[Write]) -> None:
        changes = [w for w in writes if w.value is not None or w.key in self.keys]
        if not changes:
            return
        self.revision += 1
        for write in changes:
            old = self.keys.get(write.key)
            if old is not None and old.lease in self.leases:
                self.leases[old.lease].keys.discard(write.key)
            if write.value is None:
                del self.keys[write.key]
            else:
                create = old.create_revision if old else self.revision
                version = old.version + 1 if old else 1
                self.keys[write.key] = _Key(write.value, create, self.revision, write.lease, version)
                if write.lease:
                    self.leases[write.lease].keys.add(write.key)
            self.history.append(Change(self.revision, write.key, write.value, self.now))
        self._notify()

    # -- leases ------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        self._next_lease += 1
        lease = self._next_lease
        self.leases[lease] = _Lease(ttl, self.now + ttl)
        self._schedule_expiry(lease)
        return lease

    def refresh(self, lease_id: int) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires = self.now + lease.ttl
        self._schedule_expiry(lease_id)
        return lease.ttl

    def revoke(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None and lease.keys:
            self._apply([Write(k, None) for k in sorted(lease.keys)])

    def _schedule_expiry(self, lease_id: int) -> None:
        lease = self.leases[lease_id]
        asyncio.get_running_loop().call_at(lease.expires, self._expire, lease_id)

    def _expire(self, lease_id: int) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None and lease.expires <= self.now:
            self.revoke(lease_id)

    # -- what the checkers read --------------------------------------------------

    def changed_at(self, key: str) -> float:
        """When ``key`` last changed (0 when its history is gone)."""
        for change in reversed(self.history):
            if change.key == key:
                return change.at
        return 0.0


class MemStore:
    """One replica's client of a :class:`MemEtcd` (the ``Store`` interface)."""

    def __init__(self, etcd: MemEtcd) -> None:
        self.etcd = etcd
        #: This replica cannot reach etcd (the others may).
        self.cut = False

    async def _gate(self) -> None:
        await self.etcd.gate()
        if self.cut:
            raise StoreUnavailable("etcd: no route to host")

    async def get(self, key: str, *, revision: int = 0) -> Entry | None:
        await self._gate()
        if revision > self.etcd.revision:
            raise StoreUnavailable("etcd: required revision is a future revision")
        return self.etcd.read(key, revision)

    async def get_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[Entry], int]:
        await self._gate()
        if revision > self.etcd.revision:
            raise StoreUnavailable("etcd: required revision is a future revision")
        known = set(self.etcd.keys) | ({c.key for c in self.etcd.history} if revision else set())
        keys = sorted(k for k in known if k.startswith(prefix))
        found = [e for e in (self.etcd.read(k, revision) for k in keys) if e is not None]
        return found, revision or self.etcd.revision

    async def scan(
        self, start: str, end: str, limit: int, *, keys_only: bool = False
    ) -> tuple[list[Entry], bool]:
        await self._gate()
        keys = sorted(k for k in self.etcd.keys if start <= k < end)
        found = [e for e in (self.etcd.read(k, 0) for k in keys[:limit]) if e is not None]
        return found, len(keys) > limit

    async def count(self, start: str, end: str) -> int:
        await self._gate()
        return sum(1 for k in self.etcd.keys if start <= k < end)

    async def delete_range(self, start: str, end: str) -> int:
        await self._gate()
        keys = [k for k in self.etcd.keys if start <= k < end]
        self.etcd.txn([Write(k, None) for k in keys], [])
        return len(keys)

    async def commit(
        self, writes: Sequence[Write], guards: Sequence[Guard] = (), *, timeout: float | None = None
    ) -> TxnResult:
        await self._gate()
        etcd = self.etcd
        started = etcd.now
        if etcd.slow:
            await asyncio.sleep(etcd.rng.uniform(0, etcd.slow))
        if etcd.unavailable or self.cut:
            raise StoreUnavailable("etcd: connection lost before the write")
        result = etcd.txn(writes, guards)
        if etcd.slow:
            await asyncio.sleep(etcd.rng.uniform(0, etcd.slow))
        if etcd.now - started > (timeout or TIMEOUT) or etcd.unavailable or self.cut:
            raise StoreUnavailable("etcd: deadline exceeded (the write may have happened)")
        return result

    async def grant_lease(self, ttl: int) -> int:
        await self._gate()
        return self.etcd.grant(ttl)

    async def refresh_lease(self, lease_id: int) -> int:
        await self._gate()
        return self.etcd.refresh(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._gate()
        self.etcd.revoke(lease_id)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        etcd = self.etcd
        await self._gate()
        wipes = etcd.wipes
        position = start_revision
        while True:
            if etcd.unavailable or self.cut or etcd.wipes != wipes:
                raise StoreUnavailable("etcd watch: stream closed")
            if position <= etcd.compacted:
                raise WatchCompacted(etcd.compacted)
            ready = [] if etcd.paused else [c for c in etcd.history if c.revision >= position]
            if not ready:
                await etcd.wait_change(1.0)
                continue
            first = ready[0].revision
            batch = [c for c in ready if c.revision == first and c.key.startswith(prefix)]
            position = first + 1
            if batch:
                await asyncio.sleep(etcd.rng.uniform(0, 0.02))
                yield [WatchEvent(c.key, c.value, c.revision) for c in batch]

    async def ping(self) -> StoreStatus:
        await self._gate()
        return StoreStatus(self.etcd.cluster_id, self.etcd.revision)

    async def close(self) -> None:
        return None
