"""The claims of changes from outside are pruned by the audit's own bounds, against a real
etcd: past the age bound and past the count bound they are deleted, and a change whose
claim was pruned is still never recorded twice (the floor the prune moves on counts it)."""

from __future__ import annotations

import asyncio
import json

from mission_control.server.audit import AuditLog, Change, Retention
from mission_control.server.audit_claims import ClaimsPruner
from mission_control.server.audit_keeper import AuditKeeper
from mission_control.server.audit_seen import SeenChanges, floor_key, parse_floor
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore, Store

from tests.support.etcd import etcdctl


def _change_of(key: str, new: bytes | None, old: bytes | None) -> Change | None:
    return Change("policy", key.rpartition("/")[2], old, new, key)


async def _claims(store: Store, log: AuditLog) -> list[str]:
    """The keys whose claim is kept, in key order."""
    entries, _ = await store.get_prefix(f"{log.prefix}outside/")
    return [e.key.rpartition("/")[2] for e in entries]


async def _outside_records(log: AuditLog, name: str) -> list[int]:
    """The revisions of the records of changes from outside of ``name``, in order."""
    return sorted(r.revision for r in await log.of("policy", name, 1000) if r.identity == "etcd")


def _put(endpoint: str, key: str, value: str) -> int:
    """Put ``value`` with etcdctl, as a hand edit; returns its revision."""
    return int(json.loads(etcdctl(endpoint, "put", key, value, "-w", "json"))["header"]["revision"])


async def test_claims_past_the_age_bound_are_pruned_and_their_changes_stay_recorded_once(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    now = [1_000_000.0]
    store = await EtcdStore([etcd_server.endpoint]).connect()
    log = AuditLog(store, prefix, "r1", Retention(max_records=100, max_age_secs=100), wall=lambda: now[0])
    seen, pruner = SeenChanges(log, _change_of, lambda change: False), ClaimsPruner(log)
    old_key, fresh_key = f"{prefix}/policies/old", f"{prefix}/policies/fresh"
    try:
        first = _put(etcd_server.endpoint, old_key, '{"v": 1}')
        second = _put(etcd_server.endpoint, old_key, '{"v": 2}')
        assert await seen.record(old_key, b'{"v": 1}', first) is True
        assert await seen.record(old_key, b'{"v": 2}', second) is True  # the mark moves past the first
        now[0] += 60
        fresh = _put(etcd_server.endpoint, fresh_key, '{"v": 3}')
        assert await seen.record(fresh_key, b'{"v": 3}', fresh) is True
        assert await pruner.prune(by_age=True) == 0  # none past the age bound yet
        assert await _claims(store, log) == ["fresh", "old"]

        now[0] += 50  # the old key's claim (its record written 110 s ago) is past the bound
        assert await pruner.prune(by_age=True) == 1
        assert await _claims(store, log) == ["fresh"]
        assert parse_floor(await store.get(floor_key(log))) == second
        # A replica handling the first change only now (its claim is gone, the mark names
        # the second): recorded already, not again.
        assert await seen.record(old_key, b'{"v": 1}', first) is False
        assert await seen.record(old_key, b'{"v": 2}', second) is False
        assert await _outside_records(log, "old") == [first, second]
        # A change after the floor is recorded as before.
        third = _put(etcd_server.endpoint, old_key, '{"v": 4}')
        assert await seen.record(old_key, b'{"v": 4}', third) is True
        assert await seen.record(old_key, b'{"v": 4}', third) is False
        assert await _outside_records(log, "old") == [first, second, third]
    finally:
        await store.close()


async def test_claims_past_the_count_bound_are_pruned_oldest_first(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    now = [1_000_000.0]
    store = await EtcdStore([etcd_server.endpoint]).connect()
    log = AuditLog(store, prefix, "r1", Retention(max_records=2, max_age_secs=1e6), wall=lambda: now[0])
    seen, pruner = SeenChanges(log, _change_of, lambda change: False), ClaimsPruner(log)
    revisions = {}
    try:
        for name in ("a", "b", "c", "d", "e"):
            key = f"{prefix}/policies/{name}"
            revisions[name] = _put(etcd_server.endpoint, key, '{"v": 1}')
            assert await seen.record(key, b'{"v": 1}', revisions[name]) is True
            now[0] += 1
        assert await pruner.prune(by_age=False) == 3
        assert await _claims(store, log) == ["d", "e"]
        assert parse_floor(await store.get(floor_key(log))) == revisions["c"]
        assert await pruner.prune(by_age=False) == 0  # within the bound: one count, nothing read
        for name in ("a", "b", "c", "d", "e"):
            key = f"{prefix}/policies/{name}"
            assert await seen.record(key, b'{"v": 1}', revisions[name]) is False
            assert await _outside_records(log, name) == [revisions[name]]
    finally:
        await store.close()


async def test_a_floor_put_from_outside_naming_changes_to_come_is_not_believed(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    log = AuditLog(store, prefix, "r1")
    seen = SeenChanges(log, _change_of, lambda change: False)
    key = f"{prefix}/policies/forged"
    try:
        now = _put(etcd_server.endpoint, key, '{"v": 0}')
        etcdctl(etcd_server.endpoint, "put", floor_key(log), str(now + 1000))
        assert parse_floor(await store.get(floor_key(log))) == 0
        revision = _put(etcd_server.endpoint, key, '{"v": 1}')
        assert await seen.record(key, b'{"v": 1}', revision) is True
    finally:
        await store.close()


async def test_the_keeper_prunes_the_claims_with_the_records(etcd_server: EtcdProcess, prefix: str) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    log = AuditLog(store, prefix, "r1", Retention(max_records=1, max_age_secs=1e6))
    keeper = AuditKeeper(log, _change_of, prune_delay=0.0, prune_interval=0.05)
    running = asyncio.create_task(keeper.run())
    try:
        for name in ("a", "b", "c"):
            key = f"{prefix}/policies/{name}"
            await keeper.record_seen(key, b'{"v": 1}', _put(etcd_server.endpoint, key, '{"v": 1}'))
        deadline = asyncio.get_running_loop().time() + 30
        while len(await _claims(store, log)) > 1:  # pruned by the keeper's own loop
            assert asyncio.get_running_loop().time() < deadline, await _claims(store, log)
            await asyncio.sleep(0.05)
        assert await _claims(store, log) == ["c"]
        assert keeper.claims.pruned == 2
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await store.close()
