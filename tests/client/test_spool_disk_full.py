"""A spool that fills its disk recovers: on a real 64 KiB tmpfs, writes are spooled until
the disk is full (the next one is refused), then the service comes back. Marking the
replayed writes done needs no new space (``done.log`` is laid out when the journal
opens), so every spooled write is made once, in order, the emptied spool gives its space
back, and a new write goes straight to the service. Writes the function can no longer take
are set aside on the full disk too. Needs root to mount the tmpfs."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mission_control.client import MissionControl, ResourceExhausted
from mission_control.client.spool import Spooled

from tests.client.test_spool import POLICY, Store, poll

ROW = "x" * 8000  # eight of them fill 64 KiB


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class RowStore(Store):
    def save_row(self, key: str, row: str) -> str:
        return self.save(key)

    async def asave_row(self, key: str, row: str) -> str:
        return self.save(key)


def fill(write: Any, disk: Path) -> list[str]:
    """Spool until the disk refuses: the keys kept."""
    kept: list[str] = []
    for i in range(20):
        try:
            result = write(f"k{i}", ROW)
        except ResourceExhausted:
            break
        assert isinstance(result, Spooled)
        kept.append(f"k{i}")
    assert 3 <= len(kept) < 20 and free_bytes(disk) < len(ROW)  # the disk filled up
    return kept


def fill_then_recover(store: RowStore, write: Any, spool: Any, disk: Path) -> list[str]:
    """Spool until the disk refuses; then the service is up: what was made."""
    kept = fill(write, disk)
    store.down = False
    assert poll(lambda: len(spool) == 0 and spool.broken is None, timeout=30), (len(spool), spool.broken)
    assert [key for key, _ in store.applied] == kept
    assert poll(lambda: free_bytes(disk) >= 6 * len(ROW), timeout=10)  # the space came back
    assert write("new", ROW) == "saved new"  # straight to the service
    return kept


def test_a_sync_spool_that_filled_its_disk_recovers(tiny_disk: Path) -> None:
    mc = MissionControl("disk-full", config={"storage_backend": POLICY})
    store = RowStore()
    save = mc.guard("storage_backend", spool=tiny_disk / "spool")(store.save_row)
    try:
        fill_then_recover(store, save, save.spool, tiny_disk)
    finally:
        save.spool.close()


def test_an_async_spool_that_filled_its_disk_recovers(tiny_disk: Path) -> None:
    mc = MissionControl("disk-full", config={"storage_backend": POLICY})
    store = RowStore()

    async def run() -> None:
        save = mc.guard("storage_backend", spool=tiny_disk / "spool")(store.asave_row)
        loop = asyncio.get_running_loop()

        def write(key: str, row: str) -> Any:
            return asyncio.run_coroutine_threadsafe(save(key, row), loop).result(timeout=30)

        try:
            await asyncio.to_thread(fill_then_recover, store, write, save.spool, tiny_disk)
        finally:
            save.spool.close()

    asyncio.run(run())


def test_writes_the_function_cannot_take_are_held_on_a_full_disk(tiny_disk: Path) -> None:
    store = RowStore()
    release1 = MissionControl("disk-full", config={"storage_backend": POLICY})
    save = release1.guard("storage_backend", spool=tiny_disk / "spool")(store.save_row)
    kept = fill(save, tiny_disk)
    save.spool.close()
    store.down = False

    def save_row(key: str, row: str, region: str) -> str:  # release 2 added a required argument
        return store.save(key)

    release2 = MissionControl("disk-full", config={"storage_backend": POLICY})
    save = release2.guard("storage_backend", spool=tiny_disk / "spool")(save_row)
    try:
        assert poll(lambda: len(save.spool) == 0, timeout=30), (len(save.spool), save.spool.broken)
        assert (save.spool.broken, save.spool.held, save.spool.dropped) == (None, len(kept), 0)
        assert [args for _, _, args, _ in save.spool.held_writes()] == [(key, ROW) for key in kept]
        assert store.applied == []
        assert save("new", ROW, "eu") == "saved new"
    finally:
        save.spool.close()
