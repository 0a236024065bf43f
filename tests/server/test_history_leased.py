"""The history token says the fleet was leased in its history (``server/store_history.py``,
``server/lease_epoch.py``), on a real etcd with control planes in this process: a replica
marks the token before it stores its first fleet-lease epoch record, every replica holds the
mark, a token deleted by hand is written back with it; and a replica started after the
record was deleted takes the fleet for one leased before (an unknown past), while one
started on a store whose token was never marked takes it for a new one."""

from __future__ import annotations

import asyncio

from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore, Write
from mission_control.server.store_history import StoreHistory, encode, marked, parse


async def _until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


async def _answer(plane: ControlPlane) -> bool:
    """Whether ``plane`` (the only one deciding: no leadership) takes the fleet for one
    leased before, once it has read the store."""
    await _until(lambda: plane.sync.loaded.is_set() and bool(plane.history.token))
    return plane.lease_epochs.leased_before()


async def test_the_token_is_marked_before_the_first_record_and_a_deleted_record_leaves_the_past_unknown(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    stores = [await EtcdStore([etcd_server.endpoint]).connect() for _ in range(4)]
    store = stores[0]
    planes = [ControlPlane(s, prefix=prefix, instance_id=f"r{i}") for i, s in enumerate(stores[1:3])]
    later: ControlPlane | None = None
    try:
        await asyncio.gather(*(plane.start() for plane in planes))
        await _until(lambda: all(plane.history.token for plane in planes))
        key, record_key = planes[0].history.key, planes[0].lease_epochs.key
        token = planes[0].history.token
        assert not any(plane.history.leased for plane in planes)
        assert not await _answer(planes[0])  # a fresh fleet: a token, not marked, no record
        planes[0].lease_epochs.leased()  # records its epoch (it leads: the only one deciding)
        await _until(lambda: planes[0].lease_epochs._writing is None)
        entry, record = await store.get(key), await store.get(record_key)
        assert record is not None
        assert entry is not None and parse(entry.value) == token and marked(entry.value)
        assert entry.mod_revision < record.mod_revision  # marked first
        await _until(lambda: all(plane.history.leased for plane in planes))
        # the token deleted by hand: written back, marked
        deleted = await store.commit([Write(key, None)])
        for _ in range(1000):
            entry = await store.get(key)
            if entry is not None and entry.mod_revision > deleted.revision:
                break
            await asyncio.sleep(0.02)
        assert entry is not None and parse(entry.value) == token and marked(entry.value)
        # the record deleted, and a replica started afresh: it finds the mark, no record
        await store.commit([Write(record_key, None)])
        later = ControlPlane(stores[3], prefix=prefix, instance_id="r3")
        await later.start()
        assert await _answer(later)
        assert later.lease_epochs.record is None and later.lease_epochs.earlier_until() is None
    finally:
        for plane in [*planes, *([later] if later is not None else [])]:
            await plane.stop()
        for s in stores:
            await s.close()


def test_a_mark_read_directly_counts_only_for_the_token_held() -> None:
    """A new leader reads the token with the record as of its takeover (its watch may be
    behind): the mark is taken for the token it holds, not for another one, and never
    taken off by a value without it."""

    async def unused(*args: object) -> None:
        raise AssertionError("no store access expected")

    history = StoreHistory("/p/store-history", unused, unused)  # type: ignore[arg-type]
    history.apply(encode("aaaa"))
    assert history.token == "aaaa" and not history.leased
    history.read_directly(encode("bbbb", leased=True))  # another history: a loss, told elsewhere
    history.read_directly(None)
    assert not history.leased
    history.read_directly(encode("aaaa", leased=True))
    assert history.leased
    history.apply(encode("aaaa"))  # the same token without the mark (put by hand)
    history.read_directly(encode("aaaa"))
    assert history.leased


async def test_the_mark_taken_off_by_hand_is_written_back_and_a_later_replica_finds_the_past_leased(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    """The same token put back without ``"leased"`` (a hand repair): the replicas holding
    the mark write it again, so a record deleted while every replica restarts still leaves
    the past unknown. Before: a put of the same token was nothing to them, the leader's
    next record believed its memory, and a replica started afresh took the fleet for new."""
    stores = [await EtcdStore([etcd_server.endpoint]).connect() for _ in range(4)]
    store = stores[0]
    planes = [ControlPlane(s, prefix=prefix, instance_id=f"r{i}") for i, s in enumerate(stores[1:3])]
    later: ControlPlane | None = None
    try:
        await asyncio.gather(*(plane.start() for plane in planes))
        await _until(lambda: all(plane.history.token for plane in planes))
        key, record_key = planes[0].history.key, planes[0].lease_epochs.key
        token = planes[0].history.token
        planes[0].lease_epochs.leased()
        await _until(lambda: all(plane.history.leased for plane in planes))
        stripped = await store.commit([Write(key, encode(token))])
        for _ in range(1000):
            entry = await store.get(key)
            if entry is not None and entry.mod_revision > stripped.revision:
                break
            await asyncio.sleep(0.02)
        assert entry is not None and entry.mod_revision > stripped.revision, "the mark never came back"
        assert parse(entry.value) == token and marked(entry.value)
        for plane in planes:
            await plane.stop()
        planes = []
        await store.commit([Write(record_key, None)])
        later = ControlPlane(stores[3], prefix=prefix, instance_id="r3")
        await later.start()
        assert await _answer(later)
    finally:
        for plane in [*planes, *([later] if later is not None else [])]:
            await plane.stop()
        for s in stores:
            await s.close()
