"""The leader's check of the keys it holds against etcd, and the history token read on each
health ping (``server/held_keys.py``), on a real etcd in this process.

The check tells a store that lost keys (absent from its history at the revision held, or
stored below it) from one that kept them (stored at or above the revision held, or deleted
since: the watch brings the deletion), and never compares what it cannot know (a key held
at a revision after the check began; a revision compacted away). The token read on the
ping finds a new token the watch never delivered (hidden here from it, as a watch resumed
past its revision is): the replica reads the store again and takes the loss."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from mission_control.server import held_keys
from mission_control.server.app import start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.held_keys import HeldKeysCheck
from mission_control.server.store import EtcdStore, WatchEvent
from mission_control.server.store_history import encode

from tests.support.etcd import etcdctl


async def until(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def checked(store: EtcdStore, prefix: str, held: dict[str, int]) -> tuple[str | None, list[str]]:
    """One check of ``held`` under ``prefix``: what it returned, and the losses it told."""
    told: list[str] = []
    check = HeldKeysCheck(store, [prefix + "/"], lambda: dict(held), lambda: True, lambda: 0, told.append)
    return await check.check(), told


async def put(store: EtcdStore, key: str, value: bytes = b"{}") -> int:
    revision = await store.put(key, value)
    assert revision is not None
    return revision


async def test_keys_stored_at_or_above_the_revision_held_are_no_loss_over_several_pages(
    etcd_server: EtcdProcess, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held_keys, "PAGE_KEYS", 2)
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        held = {f"{prefix}/k{n}": await put(store, f"{prefix}/k{n}") for n in range(5)}
        await put(store, f"{prefix}/k3", b"newer")  # the watch is bringing it
        assert await checked(store, prefix, held) == (None, [])
    finally:
        await store.close()


async def test_a_key_deleted_since_the_revision_held_is_no_loss(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        held = {f"{prefix}/gone": await put(store, f"{prefix}/gone")}
        await store.delete_range(f"{prefix}/gone", f"{prefix}/gone\0")
        assert await checked(store, prefix, held) == (None, [])
    finally:
        await store.close()


async def test_a_key_absent_from_the_history_at_the_revision_held_is_a_loss(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        await put(store, f"{prefix}/kept")
        elsewhere = await put(store, f"{prefix}-other/x")  # what the revision held is now
        found, told = await checked(store, prefix, {f"{prefix}/lost": elsewhere})
        assert found is not None and "is not in the store's history" in found
        assert told == [found]
    finally:
        await store.close()


async def test_a_key_stored_below_the_revision_held_is_a_loss(etcd_server: EtcdProcess, prefix: str) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        older = await put(store, f"{prefix}/older")
        later = await put(store, f"{prefix}-other/x")
        found, told = await checked(store, prefix, {f"{prefix}/older": later})
        assert found == f"{prefix}/older stored at revision {older}, {later} held"
        assert told == [found]
    finally:
        await store.close()


async def test_a_key_held_at_a_revision_the_store_has_not_reached_is_not_compared(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        now = (await store.ping()).revision
        assert await checked(store, prefix, {f"{prefix}/ahead": now + 1000}) == (None, [])
    finally:
        await store.close()


async def test_a_revision_compacted_away_tells_nothing(etcd: EtcdProcess, prefix: str) -> None:
    store = await EtcdStore([etcd.endpoint]).connect()
    try:
        at = await put(store, f"{prefix}-other/x")
        now = await put(store, f"{prefix}-other/x")
        etcdctl(etcd.endpoint, "compact", str(now))
        assert await checked(store, prefix, {f"{prefix}/lost": at}) == (None, [])
    finally:
        await store.close()


class TokenBlindStore(EtcdStore):
    """Once :attr:`blind`, its watch never delivers the history token's changes (as a
    watch that resumed past the revision of one does not)."""

    blind = False

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        async def blind() -> AsyncIterator[list[WatchEvent]]:
            async for events in super(TokenBlindStore, self).watch(prefix, start_revision):
                kept = [e for e in events if not (self.blind and e.key.endswith("/store-history"))]
                if kept:
                    yield kept

        return blind()


async def test_a_new_token_the_watch_never_delivered_is_read_on_the_ping_and_taken_as_a_loss(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = TokenBlindStore([etcd_server.endpoint])
    running = await start_control_plane(store, "127.0.0.1:0", prefix=prefix)
    plane = running.plane
    try:
        await until(lambda: plane.history.token != "")
        held = plane.history.token
        store.blind = True
        writer = await EtcdStore([etcd_server.endpoint]).connect()
        try:
            await writer.put(f"{prefix}/store-history", encode("0123456789abcdef"))
        finally:
            await writer.close()
        await until(lambda: plane.history.token == "0123456789abcdef")
        assert plane.sync.wipes == 1 and held != "0123456789abcdef"
    finally:
        await running.stop(grace=0.5)
