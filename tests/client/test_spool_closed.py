"""A spool closed (``save.spool.close()``, ``mc.close()``) while its function is still
called, as in a rolling restart: the next process may own the directory now, so the closed
spool keeps nothing there and hands out no receipt; the write gets the taxonomy's
``ResourceExhausted`` instead, sync or async."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mission_control.client import MissionControl, ResourceExhausted
from mission_control.client.journal import Journal
from mission_control.client.spool import Spooled
from mission_control.client.spool_writes import decode_write

from tests.client.test_spool import POLICY, Store


def keys_on_disk(directory: Path) -> list[str]:
    """What the next process that opens ``directory`` finds waiting."""
    journal = Journal(directory)  # the closed spool's lock is gone: this opens it
    try:
        return [decode_write(r.payload)[2][0] for r in journal.pending()]
    finally:
        journal.close()


def test_a_closed_sync_spool_refuses_writes_instead_of_spooling_them(tmp_path: Path) -> None:
    store = Store()
    mc = MissionControl("closed", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path)(store.save)
    assert isinstance(save("a1"), Spooled)
    mc.close()
    assert keys_on_disk(tmp_path) == ["a1"]
    with pytest.raises(ResourceExhausted) as refused:  # earlier writes wait: none overtakes them
        save("a2")
    assert "closed" in str(refused.value.__notes__)
    assert keys_on_disk(tmp_path) == ["a1"]
    assert save.spool.broken is not None and "closed" in save.spool.broken


def test_a_closed_empty_sync_spool_makes_the_write_or_refuses_it(tmp_path: Path) -> None:
    store = Store()
    store.down = False
    save = MissionControl("closed", config={"storage_backend": POLICY}).guard(
        "storage_backend", spool=tmp_path
    )(store.save)
    save.spool.close()
    assert save("a1") == "saved a1"  # as a broken spool: the service still gets writes
    store.down = True
    with pytest.raises(ResourceExhausted):
        save("a2")
    assert keys_on_disk(tmp_path) == []


def test_a_closed_async_spool_refuses_writes_with_the_taxonomys_error(tmp_path: Path) -> None:
    made: list[str] = []
    down = True

    async def save_async(key: str) -> str:
        if down:
            raise ConnectionRefusedError("storage is down")
        made.append(key)
        return f"saved {key}"

    async def run() -> None:
        nonlocal down
        mc = MissionControl("closed", config={"storage_backend": POLICY})
        save = mc.guard("storage_backend", spool=tmp_path / "a")(save_async)
        assert isinstance(await save("a1"), Spooled)
        mc.close()
        assert keys_on_disk(tmp_path / "a") == ["a1"]
        with pytest.raises(ResourceExhausted):
            await asyncio.wait_for(save("a2"), 10)
        save.spool.close()  # a second close is a no-op
        other = MissionControl("closed-b", config={"storage_backend": POLICY})  # its breaker closed
        empty = other.guard("storage_backend", spool=tmp_path / "b")(save_async)
        empty.spool.close()
        down = False
        assert await empty("b1") == "saved b1"  # as a broken spool: the service still gets writes
        down = True
        with pytest.raises(ResourceExhausted):
            await asyncio.wait_for(empty("b2"), 10)

    asyncio.run(run())
    assert keys_on_disk(tmp_path / "a") == ["a1"] and keys_on_disk(tmp_path / "b") == []
    assert made == ["b1"]
