"""The etcd history token (``server/store_history.py``), on a real etcd with control planes
in this process: replicas that start together store one token and all hold it; the token
goes with a loss of data — at once, before the reload — and a new one is stored, also when
the store still holds the old one (restored from a backup); a token deleted or written
malformed by hand is replaced; and a leader says the token it holds in its snapshots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore, Write
from mission_control.server.store_history import encode, parse


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
async def test_a_token_deleted_or_malformed_is_replaced(
    planes: tuple[EtcdStore, list[ControlPlane]], value: bytes | None
) -> None:
    store, started = planes
    await _until(lambda: all(plane.history.token for plane in started))
    old = started[0].history.token
    await store.commit([Write(started[0].history.key, value)])
    await _until(lambda: all(plane.history.token not in ("", old) for plane in started))
    assert await _stored(store, started) == started[1].history.token
