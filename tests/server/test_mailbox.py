"""The per-stream mailbox: bounded, first in first out, wakes its one reader."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.server.mailbox import Mailbox


async def test_a_waiting_reader_is_woken_in_order_and_the_bound_holds() -> None:
    box = Mailbox(2)
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not reader.done()
    box.put_nowait("a")
    box.put_nowait("b")
    assert await asyncio.wait_for(reader, 5) == "a"
    box.put_nowait("c")
    assert box.full() and box.qsize() == 2
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait("d")
    assert box.get_nowait() == "b" and await box.get() == "c" and box.empty()
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()


async def test_a_cancelled_reader_leaves_the_items_for_the_next() -> None:
    box = Mailbox(4)
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    box.put_nowait("kept")
    assert await asyncio.wait_for(box.get(), 5) == "kept"
