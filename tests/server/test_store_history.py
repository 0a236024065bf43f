"""The etcd history token (``server/store_history.py``), on a real etcd with control planes
in this process: replicas that start together store one token and all hold it; the token
goes with a loss of data — at once, before the reload — and a new one is stored, also when
the store still holds the old one (restored from a backup); a token deleted or written
malformed by hand is written back as held (no loss); a token replaced by another valid one
is a loss of data for every replica; a full load without the token held (or with another)
says a loss; and a leader says the token it holds in its snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import Entry, EtcdStore, Write
from mission_control.server.store_history import StoreHistory, encode, parse


async def _until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


@pytest.fixture
async def planes(
    etcd_server: EtcdProcess, prefix: str
) -> AsyncIterator[tuple[EtcdStore, list[ControlPlane]]]:
    stores = [await EtcdStore([etcd_server.endpoint]).connect() for _ in range(3)]
    started = [ControlPlane(store, prefix=prefix, instance_id=f"r{i}") for i, store in enumerate(stores[1:])]
    await asyncio.gather(*(plane.start() for plane in started))
    try:
        yield stores[0], started
    finally:
        for plane in started:
            await plane.stop()
        for store in stores:
            await store.close()


async def _stored(store: EtcdStore, planes: list[ControlPlane]) -> str:
    entry = await store.get(planes[0].history.key)
    return parse(entry.value) if entry is not None else ""


async def test_replicas_that_start_together_store_one_token_and_hold_it(
    planes: tuple[EtcdStore, list[ControlPlane]],
) -> None:
    store, started = planes
    await _until(lambda: all(plane.history.token for plane in started))
    token = await _stored(store, started)
    assert token and all(plane.history.token == token for plane in started)
    entry = await store.get(started[0].history.key)
    assert entry is not None and entry.version == 1  # stored once: the others read it
    assert all(plane.snapshot().history == token for plane in started)


async def test_a_loss_of_data_lets_the_token_go_at_once_and_a_new_one_is_stored(
    planes: tuple[EtcdStore, list[ControlPlane]], prefix: str
) -> None:
    store, started = planes
    await _until(lambda: all(plane.history.token for plane in started))
    old = started[0].history.token
    await store.delete_range(prefix + "/", prefix + "0")  # wiped...
    started[0].sync.lost_data("test: wiped")  # ...and noticed by one replica
    assert started[0].history.token == ""  # before the reload
    await _until(lambda: all(plane.history.token not in ("", old) for plane in started))
    assert started[0].history.token == started[1].history.token == await _stored(store, started)


async def test_a_token_the_store_still_holds_after_a_loss_of_data_is_not_taken_again(
    planes: tuple[EtcdStore, list[ControlPlane]],
) -> None:
    """Restored from a backup: the store holds the token of before, but not every revision
    the replicas saw under it."""
    store, started = planes
    await _until(lambda: all(plane.history.token for plane in started))
    old = started[0].history.token
    started[0].sync.lost_data("test: restored from a backup")
    await _until(lambda: all(plane.history.token not in ("", old) for plane in started))
    assert await _stored(store, started) == started[0].history.token


@pytest.mark.parametrize(
    "value",
    [None, b"not json", b'{"history": 7}', encode("x" * 65)],
    ids=["deleted", "text", "number", "long"],
)
async def test_a_token_deleted_or_malformed_by_hand_is_written_back_and_no_loss_is_taken(
    planes: tuple[EtcdStore, list[ControlPlane]], value: bytes | None
) -> None:
    """etcd recorded the edit (the watch delivers it): its history is whole, the token held
    still names it."""
    store, started = planes
    await _until(lambda: all(plane.history.token for plane in started))
    old = started[0].history.token
    edited = await store.commit([Write(started[0].history.key, value)])
    entry = None

    async def back() -> bool:
        nonlocal entry
        entry = await store.get(started[0].history.key)
        return entry is not None and entry.mod_revision > edited.revision and parse(entry.value) == old

    deadline = asyncio.get_running_loop().time() + 20
    while not await back():
        assert asyncio.get_running_loop().time() < deadline, "the token held was not written back"
        await asyncio.sleep(0.02)
    await _until(lambda: all(plane.sync.delivered >= entry.mod_revision for plane in started))  # type: ignore[union-attr]
    assert all(plane.history.token == old for plane in started)
    assert all(plane.sync.wipes == 0 for plane in started)


async def test_a_token_replaced_by_another_is_a_loss_of_data_for_every_replica(
    planes: tuple[EtcdStore, list[ControlPlane]],
) -> None:
    """Another valid token where one was held: the store lost its data (wiped and written
    past the revisions held, unnoticed otherwise) and a replica stored a new token."""
    store, started = planes
    await _until(lambda: all(plane.history.token for plane in started))
    await store.commit([Write(started[0].history.key, encode("feedface"))])
    await _until(lambda: all(plane.history.token == "feedface" for plane in started))
    assert all(plane.sync.wipes == 1 for plane in started)
    assert all(plane.snapshot().history == "feedface" for plane in started)


def test_a_full_load_without_the_token_held_or_with_another_says_the_store_lost_its_data() -> None:
    async def never(*args: object) -> None:
        raise AssertionError("not called")

    history = StoreHistory("p/store-history", never, never)  # type: ignore[arg-type]
    other = Entry("p/other", b"{}", 5)
    assert history.loss_in([other]) is None  # none held: nothing to lose
    history.token = "aa"
    assert history.loss_in([other, Entry(history.key, encode("aa"), 3)]) is None
    assert history.loss_in([other, Entry(history.key, b"garbled", 3)]) is None  # written back
    assert "gone" in (history.loss_in([other]) or "")
    assert "replaced by bb" in (history.loss_in([Entry(history.key, encode("bb"), 3)]) or "")
