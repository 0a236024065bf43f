"""Where the control plane keeps its truth: a small key-value interface, and etcd behind it.

The interface is what the control plane needs and no more: read one key (now or at an
earlier revision) or a prefix, write several keys in one transaction guarded by
compare-and-swap conditions, watch a prefix from a revision, and say which cluster and
revision the store is at. :class:`EtcdStore` implements it on ``etcd3aio``; every failure
to reach etcd surfaces as :class:`StoreUnavailable`. The interface is small on purpose: an
in-memory store with injected faults can stand in for etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from etcd3aio.errors import EtcdError
from etcd3aio.kv import KVService, prefix_range_end

from .etcd_names import ResolvingEtcdClient

__all__ = [
    "Entry",
    "EtcdStore",
    "Guard",
    "LeaseLost",
    "Store",
    "StoreStatus",
    "StoreUnavailable",
    "TxnResult",
    "WatchCompacted",
    "WatchEvent",
    "Write",
]


#: Keys per read of a prefix (a breaker or policy record is at most a few KiB).
PAGE_KEYS = 256


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


class LeaseLost(StoreUnavailable):
    """A write bound to a lease etcd no longer has (expired, or revoked by hand): etcd
    answered, so the store is reachable — take a new lease and write again."""


class WatchCompacted(Exception):
    """The watch start revision was compacted away: reload everything, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch revision compacted (now at {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    #: The etcd lease the key is bound to (0: none).
    lease: int = 0
    #: How many times the key was written since it was created (0: not known).
    version: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did. When a condition failed nothing was written, and
    ``entries`` holds what every key the transaction wrote or was guarded by holds now
    (None = absent), so the caller can tell a lost compare-and-swap from a lost fence."""

    succeeded: bool
    revision: int
    entries: Mapping[str, Entry | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Which cluster answered and its current revision: a cluster id that changes or a
    revision that goes backwards means the store was wiped or replaced."""

    cluster_id: int
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str
    #: None when the key was deleted.
    value: bytes | None
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Write:
    """One write of a transaction: put ``value`` (or delete when None), optionally only
    if the key's ``mod_revision`` still equals ``expected_revision`` (0 = must not exist)."""

    key: str
    value: bytes | None
    expected_revision: int | None = None
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Guard:
    """A transaction condition on another key: its create_revision must equal this one
    (0 = the key must not exist) and, when ``lease`` is set, it must be held on that lease.
    Used to fence writes to the current leader: revisions start over when etcd is wiped, so
    another leader's key may be created at the same revision, but never on the same lease."""

    key: str
    create_revision: int
    lease: int = 0


class Store(Protocol):
    async def get(self, key: str, *, revision: int = 0) -> Entry | None:
        """The key now, or as it was at ``revision`` (raises WatchCompacted when that
        revision is compacted away)."""
        ...

    async def get_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[Entry], int]:
        """Every entry under ``prefix`` and the store revision they were read at
        (``revision``: as of that one; 0: now)."""
        ...

    async def scan(
        self, start: str, end: str, limit: int, *, keys_only: bool = False
    ) -> tuple[list[Entry], bool]:
        """At most ``limit`` entries of ``[start, end)`` in key order (``keys_only``: their
        values left empty), and whether more follow. Raises StoreUnavailable."""
        ...

    async def count(self, start: str, end: str) -> int:
        """How many keys ``[start, end)`` holds. Raises StoreUnavailable."""
        ...

    async def delete_range(self, start: str, end: str) -> int:
        """Delete the keys of ``[start, end)``; returns how many. Raises StoreUnavailable."""
        ...

    async def commit(
        self, writes: Sequence[Write], guards: Sequence[Guard] = (), *, timeout: float | None = None
    ) -> TxnResult:
        """All writes or none, only when every condition holds; ``timeout``: this write's
        bound instead of the store's own."""
        ...

    async def grant_lease(self, ttl: int) -> int: ...

    async def refresh_lease(self, lease_id: int) -> int:
        """Renew a lease; returns its remaining TTL (0 when it has expired)."""
        ...

    async def revoke_lease(self, lease_id: int) -> None: ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Changes under ``prefix`` from ``start_revision`` on; raises WatchCompacted."""
        ...

    async def ping(self) -> StoreStatus:
        """Raises StoreUnavailable unless the store answers within its timeout."""
        ...

    async def close(self) -> None: ...


class EtcdStore:
    """:class:`Store` on an etcd cluster.

    Args:
        endpoints: ``host:port`` of the members.
        timeout: bound on any single request, so a dead cluster is noticed quickly.
        user / password: etcd authentication, when enabled.
        ca_cert / cert_key / cert_chain: PEM bytes for TLS.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        user: str | None = None,
        password: str | None = None,
        ca_cert: bytes | None = None,
        cert_key: bytes | None = None,
        cert_chain: bytes | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._user = user
        self._password = password
        tls = {"ca_cert": ca_cert, "cert_key": cert_key, "cert_chain": cert_chain}
        self._tls = {k: v for k, v in tls.items() if v is not None}
        self._client = ResolvingEtcdClient(
            self.endpoints,
            rpc_max_attempts=2,
            watch_reconnect_backoff_seconds=0.1,
            watch_max_reconnect_backoff_seconds=1.0,
            tls_server_name="localhost" if self._tls and len(self.endpoints) > 1 else None,
            **self._tls,  # type: ignore[arg-type]
        )
        self._connected = False
        #: Called with (the key as text, its revision) for each key read or watched that is
        #: not UTF-8: such a key is skipped, never the end of a load or a watch.
        self.on_bad_key: Callable[[str, int], None] = lambda key, revision: None

    async def connect(self) -> EtcdStore:
        if not self._connected:
            await self._client.connect()
            self._connected = True
            if self._user is not None:
                await self._authenticate()
        return self

    async def _authenticate(self) -> None:
        auth = self._client.auth
        assert auth is not None
        try:
            response = await auth.authenticate(self._user or "", self._password or "", timeout=self.timeout)
        except (EtcdError, grpc.RpcError, TimeoutError) as err:
            raise StoreUnavailable(f"etcd authentication failed: {type(err).__name__}") from err
        self._client.set_token(response.token)

    async def close(self) -> None:
        if self._connected:
            await self._client.close()
            self._connected = False

    @property
    def _kv(self) -> KVService:
        kv = self._client.kv
        if kv is None:
            raise StoreUnavailable("store is not connected")
        return kv

    @property
    def unresolved(self) -> str | None:
        """Why no etcd endpoint has an address (its names do not resolve), or None."""
        return self._client.unresolved

    async def _call(self, coro, bound: float | None = None):  # type: ignore[no-untyped-def]
        """``coro``'s answer; ``bound``: the timeout it was given, when not the store's own."""
        try:
            return await coro
        except (EtcdError, grpc.RpcError, TimeoutError, OSError) as err:
            raise StoreUnavailable(self._why(err, bound=bound)) from err

    def _why(self, err: BaseException, doing: str = "", bound: float | None = None) -> str:
        if self._client.unresolved is not None:
            return f"etcd {','.join(self.endpoints)}: {self._client.unresolved}"
        text = _one_line(err)
        if isinstance(err, TimeoutError) or not text:  # a timeout says nothing of itself
            text = f"did not answer within {bound or self.timeout:g}s"
        return f"etcd{doing}: {text}"

    async def get(self, key: str, *, revision: int = 0) -> Entry | None:
        try:
            response = await self._call(self._kv.get(key, revision=revision, timeout=self.timeout))
        except StoreUnavailable as err:
            if revision and "compacted" in str(err.__cause__):
                raise WatchCompacted(revision) from err
            raise
        for kv in response.kvs:
            return self._entry(kv)
        return None

    async def get_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[Entry], int]:
        # Read in pages, all at the first page's revision: one response for a big prefix
        # would pass the client's message size limit and the load would never succeed.
        end = prefix_range_end(prefix)
        start: bytes | str = prefix
        entries: list[Entry] = []
        while True:
            response = await self._call(
                self._kv.get(start, end, revision=revision, limit=PAGE_KEYS, timeout=self.timeout)
            )
            revision = revision or int(response.header.revision)
            entries += [entry for kv in response.kvs if (entry := self._entry(kv)) is not None]
            if not response.more or not response.kvs:
                return entries, revision
            start = bytes(response.kvs[-1].key) + b"\0"

    async def scan(
        self, start: str, end: str, limit: int, *, keys_only: bool = False
    ) -> tuple[list[Entry], bool]:
        # Ascending key order with a limit is the one range etcd answers without reading
        # the whole range first (any other sort order makes it read everything).
        response = await self._call(
            self._kv.get(start, end, limit=limit, keys_only=keys_only, timeout=self.timeout)
        )
        entries = [entry for kv in response.kvs if (entry := self._entry(kv)) is not None]
        return entries, bool(response.more)

    async def count(self, start: str, end: str) -> int:
        response = await self._call(self._kv.get(start, end, count_only=True, timeout=self.timeout))
        return int(response.count)

    async def delete_range(self, start: str, end: str) -> int:
        response = await self._call(self._kv.delete(start, end, timeout=self.timeout))
        return int(response.deleted)

    async def put(self, key: str, value: bytes, *, expected_revision: int | None = None) -> int | None:
        """A plain write (tools and benchmarks; the control plane writes through ``commit``)."""
        if expected_revision is None:
            response = await self._call(self._kv.put(key, value, timeout=self.timeout))
            return int(response.header.revision)
        result = await self.commit([Write(key, value, expected_revision)])
        return result.revision if result.succeeded else None

    async def commit(
        self, writes: Sequence[Write], guards: Sequence[Guard] = (), *, timeout: float | None = None
    ) -> TxnResult:
        compare = [KVService.txn_compare_create_revision(g.key, g.create_revision) for g in guards]
        compare += [_lease_equals(g.key, g.lease) for g in guards if g.lease]
        ops = []
        for write in writes:
            if write.expected_revision is not None:
                compare.append(_mod_revision_equals(write.key, write.expected_revision))
            if write.value is None:
                ops.append(KVService.txn_op_delete(write.key))
            else:
                ops.append(KVService.txn_op_put(write.key, write.value, lease=write.lease))
        # When a condition fails, the same transaction reads what the conditions were about.
        watched = list(dict.fromkeys([*(g.key for g in guards), *(w.key for w in writes)]))
        reads = [KVService.txn_op_get(key) for key in watched]
        try:
            bound = timeout or self.timeout
            response = await self._call(self._kv.txn(compare, ops, reads, timeout=bound), bound)
        except StoreUnavailable as err:
            if "lease not found" in str(err):
                raise LeaseLost(str(err)) from err.__cause__
            raise
        revision = int(response.header.revision)
        if response.succeeded:
            return TxnResult(True, revision)
        entries: dict[str, Entry | None] = dict.fromkeys(watched)
        for key, op in zip(watched, response.responses, strict=True):
            for kv in op.response_range.kvs:
                entries[key] = self._entry(kv)
        return TxnResult(False, revision, entries)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        watch = self._client.watch
        if watch is None:
            raise StoreUnavailable("store is not connected")
        stream = watch.watch(prefix, prefix_range_end(prefix), start_revision=start_revision)
        try:
            async for response in stream:
                if response.compact_revision > 0:
                    raise WatchCompacted(response.compact_revision)
                if response.canceled:
                    raise StoreUnavailable(f"watch canceled: {response.cancel_reason}")
                events = [event for e in response.events if (event := self._event(e)) is not None]
                if events:
                    yield events
        except (EtcdError, grpc.RpcError, OSError) as err:
            raise StoreUnavailable(self._why(err, " watch")) from err
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @property
    def _lease(self):  # type: ignore[no-untyped-def]
        lease = self._client.lease
        if lease is None:
            raise StoreUnavailable("store is not connected")
        return lease

    async def grant_lease(self, ttl: int) -> int:
        response = await self._call(self._lease.grant(ttl, timeout=self.timeout))
        return int(response.ID)

    async def refresh_lease(self, lease_id: int) -> int:
        async def once() -> int:
            stream = self._lease.keep_alive(lease_id)
            try:
                async for response in stream:
                    return int(response.TTL)
                return 0
            finally:
                stream.cancel()

        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that
            # arrives as the answer does, and a loop renewing leases would then go on.
            async with asyncio.timeout(self.timeout):
                return await once()
        except (EtcdError, grpc.RpcError, TimeoutError, OSError) as err:
            raise StoreUnavailable(self._why(err, " lease keep-alive")) from err

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(self._lease.revoke(lease_id, timeout=self.timeout))

    async def ping(self) -> StoreStatus:
        """Raises StoreUnavailable unless the cluster answers a read within the timeout."""
        response = await self._call(self._kv.get("__mission_control_ping__", timeout=self.timeout))
        return StoreStatus(int(response.header.cluster_id), int(response.header.revision))

    def _key(self, kv, counted: bool = True) -> str | None:  # type: ignore[no-untyped-def]
        try:
            return str(kv.key.decode())
        except UnicodeDecodeError:
            if counted:
                self.on_bad_key(kv.key.decode(errors="backslashreplace"), int(kv.mod_revision))
            return None

    def _entry(self, kv) -> Entry | None:  # type: ignore[no-untyped-def]
        key = self._key(kv)
        if key is None:
            return None
        revisions = int(kv.mod_revision), int(kv.create_revision)
        return Entry(key, bytes(kv.value), *revisions, int(kv.lease), int(kv.version))

    def _event(self, e) -> WatchEvent | None:  # type: ignore[no-untyped-def]
        deleted = e.type == e.DELETE
        key = self._key(e.kv, counted=not deleted)  # its put was counted already
        if key is None:
            return None
        return WatchEvent(
            key, None if deleted else bytes(e.kv.value), int(e.kv.mod_revision), int(e.kv.lease)
        )


def _lease_equals(key: str, lease: int):  # type: ignore[no-untyped-def]
    compare = KVService.txn_compare_version(key, 0)
    compare.target = compare.LEASE
    compare.lease = lease
    return compare


def _mod_revision_equals(key: str, revision: int):  # type: ignore[no-untyped-def]
    # etcd3aio has helpers for VERSION and CREATE compares only; MOD is the same message
    # with another target (a missing key compares as mod_revision 0).
    compare = KVService.txn_compare_version(key, 0)
    compare.target = compare.MOD
    compare.mod_revision = revision
    return compare


async def wait_until(store: Store, deadline: float) -> bool:
    """Poll ``store.ping`` until it answers or the loop time passes ``deadline``."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            await store.ping()
            return True
        except StoreUnavailable:
            await asyncio.sleep(0.2)
    return False


def _one_line(err: BaseException) -> str:
    """``err`` in one line: a gRPC error's code and details, not its multi-line dump."""
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        with contextlib.suppress(Exception):
            code, details = err.code(), err.details()  # type: ignore[attr-defined]
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            return f"{name}: {details}" if details else name
    return " ".join(str(err).split())
