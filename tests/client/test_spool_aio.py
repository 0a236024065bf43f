"""The write spool of an ``async def`` write function in one process: order, counts, the
same journal as the sync spool, an event loop that keeps running while the spool writes
to disk, and the write id an upstream can apply a write once by."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from mission_control.client import MissionControl
from mission_control.client import journal as journal_module
from mission_control.client.spool import Spooled, current_write_id, write_id_metadata
from mission_control.client.spool_common import WRITE_ID_HEADER, encode_write

from tests.client.test_spool import POLICY, Store
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


class AsyncStore(Store):
    async def asave(self, key: str) -> str:
        await asyncio.sleep(0)
        return self.save(key)


async def apoll(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def test_async_writes_the_service_cannot_take_are_kept_and_made_in_order(tmp_path: Path) -> None:
    store = AsyncStore()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path)(store.asave)
    receipts = [await save(f"k{i}") for i in range(5)]
    assert all(isinstance(r, Spooled) for r in receipts)
    assert [r.seq for r in receipts] == [1, 2, 3, 4, 5]
    store.down = False
    assert await apoll(lambda: len(save.spool) == 0)
    assert store.applied == [(f"k{i}", r.write_id) for i, r in enumerate(receipts)]
    tally = mc.view.get("storage_backend").tally
    assert (tally.spooled, tally.spool_replayed, tally.spool_dropped) == (5, 5, 0)
    assert await save("k5") == "saved k5"  # the spool is empty: made at once
    mc.close()


async def test_one_journal_format_a_sync_spool_is_replayed_by_an_async_one(tmp_path: Path) -> None:
    store = AsyncStore()

    def guarded(mc: MissionControl, asynchronous: bool) -> Any:
        if asynchronous:

            async def save(key: str) -> str:
                return store.save(key)
        else:

            def save(key: str) -> str:  # type: ignore[misc]
                return store.save(key)

        return mc.guard("storage_backend", spool=tmp_path)(save)

    first = MissionControl("spool-agent", config={"storage_backend": POLICY})
    sync_save = guarded(first, asynchronous=False)
    ids = [(await asyncio.to_thread(sync_save, f"k{i}")).write_id for i in range(3)]
    first.close()
    store.down = False
    second = MissionControl("spool-agent", config={"storage_backend": POLICY})
    async_save = guarded(second, asynchronous=True)  # decorated on the loop: replays at once
    assert await apoll(lambda: len(async_save.spool) == 0)
    assert store.applied == [(f"k{i}", write_id) for i, write_id in enumerate(ids)]
    assert async_save.spool.replayed == 3
    second.close()


async def test_an_async_writer_does_not_block_the_loop_while_spooling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every fsync of the spool waits until a concurrent task has ticked twice: were an
    fsync made on the loop's thread, that task could not tick and the fsync says so."""
    ticks = 0
    loop_thread = threading.get_ident()
    blocked: list[str] = []
    real_fsync = os.fsync

    def fsync_seen_by_the_loop(fd: int) -> None:
        if threading.get_ident() == loop_thread:
            blocked.append("an fsync ran on the event loop's thread")
        else:
            start, deadline = ticks, time.monotonic() + 10
            while ticks < start + 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            if ticks < start + 2:
                blocked.append("the loop did not tick while the spool fsync'd")
        real_fsync(fd)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    store = AsyncStore()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path)(store.asave)
    monkeypatch.setattr(journal_module.os, "fsync", fsync_seen_by_the_loop)
    ticking = asyncio.create_task(ticker())
    try:
        receipts = [await save(f"k{i}") for i in range(10)]
        store.down = False
        assert await apoll(lambda: len(save.spool) == 0)
    finally:
        ticking.cancel()
    assert all(isinstance(r, Spooled) for r in receipts)
    assert save.spool.replayed == 10 and not blocked, blocked
    mc.close()


async def test_concurrent_async_writers_are_spooled_in_the_order_they_reached_the_spool(
    tmp_path: Path,
) -> None:
    store = AsyncStore()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path)(store.asave)
    await save("first")  # fails: the breaker counts it
    await save("second")  # opens it
    receipts = await asyncio.gather(*(save(f"k{i}") for i in range(20)))
    assert [r.seq for r in receipts] == sorted(r.seq for r in receipts)
    store.down = False
    assert await apoll(lambda: len(save.spool) == 0)
    made = [key for key, _ in store.applied]
    assert made == ["first", "second", *(f"k{i}" for i in range(20))]
    assert all(write_id for _, write_id in store.applied) and current_write_id() is None
    mc.close()


class OncePerId(pb_grpc.EchoServiceServicer):
    """An upstream that applies a write once per ``x-write-id``, and answers the first try
    of each too late for the client (it was applied all the same)."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.tries: Counter[str] = Counter()

    async def Echo(self, request: pb.EchoRequest, context: grpc.aio.ServicerContext) -> pb.EchoResponse:
        write_id = dict(context.invocation_metadata() or ()).get(WRITE_ID_HEADER, "")
        self.tries[write_id] += 1
        if write_id not in self.applied:
            self.applied.append(write_id)
            await asyncio.sleep(1.0)  # the client has given up by now
        return pb.EchoResponse(text=write_id)


async def test_a_write_made_twice_carries_one_id_an_upstream_can_apply_once(tmp_path: Path) -> None:
    upstream = OncePerId()
    server = grpc.aio.server()
    pb_grpc.add_EchoServiceServicer_to_server(upstream, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    try:
        stub = pb_grpc.EchoServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))

        @mc.guard("storage_backend", spool=tmp_path, idempotent=True)
        async def save(key: str) -> str:
            answer = await stub.Echo(pb.EchoRequest(text=key), timeout=0.3, metadata=write_id_metadata())
            return answer.text  # type: ignore[no-any-return]

        results = [await save(f"k{i}") for i in range(3)]  # each: timed out, then retried
        assert await apoll(lambda: len(save.spool) == 0)
        assert len(upstream.applied) == 3 and all(upstream.applied)
        assert all(upstream.tries[write_id] >= 2 for write_id in upstream.applied)
        made = [r for r in results if not isinstance(r, Spooled)]
        assert set(made) <= set(upstream.applied) and write_id_metadata() == ()
    finally:
        mc.close()
        await server.stop(0)


async def test_opening_a_spool_left_by_a_previous_process_does_not_block_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the segments waits until a concurrent task has ticked three times: were the
    journal read on the loop's thread (inside the decoration), that task could not tick."""
    left = journal_module.Journal(tmp_path)
    for i in range(3):
        left.append(encode_write(f"{i:032x}", "asave", (f"old{i}",), {}))
    left.close()
    ticks = 0
    seen: list[int] = []
    real_read_records = journal_module._read_records

    def read_records_seen_by_the_loop(path: Path) -> Any:
        start, deadline = ticks, time.monotonic() + 5
        while ticks < start + 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append(ticks - start)
        return real_read_records(path)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(journal_module, "_read_records", read_records_seen_by_the_loop)
    store = AsyncStore()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        save = mc.guard("storage_backend", spool=tmp_path)(store.asave)
        receipt = await save("new")  # waits for the read: joins the end of what was left
        assert isinstance(receipt, Spooled) and receipt.seq == 4 and len(save.spool) == 4
        store.down = False
        assert await apoll(lambda: len(save.spool) == 0)
    finally:
        ticking.cancel()
    assert seen and min(seen) >= 3, seen  # the loop ran while the journal was read
    assert [key for key, _ in store.applied] == ["old0", "old1", "old2", "new"]
    mc.close()
