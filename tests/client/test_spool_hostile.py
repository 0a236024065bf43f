"""A spool directory whose files were changed by hand or by other tools: a segment copied
beside itself, a done mark no journal wrote, ``done.log`` made a directory. Each gets a
clear error or count: nothing is dropped silently, no count goes negative, and writes still
reach the service when the spool cannot keep them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mission_control.client import MissionControl, ResourceExhausted
from mission_control.client import journal as journal_module
from mission_control.client.journal import Journal
from mission_control.client.spool_common import encode_write

from tests.client.test_spool import POLICY, Store, poll

KEYS = ["old0", "old1", "old2"]


def left_by_a_previous_process(directory: Path) -> Path:
    """A spool directory holding three writes not made yet; its one segment."""
    journal = Journal(directory)
    for i, key in enumerate(KEYS):
        journal.append(encode_write(f"{i:032x}", "save", (key,), {}))
    journal.close()
    (segment,) = directory.glob("segment-*.log")
    return segment


def spooled(store: Store, directory: Path) -> Any:
    """``store.save`` guarded for the storage service with a spool in ``directory``."""
    return MissionControl("hostile", config={"storage_backend": POLICY}).guard(
        "storage_backend", spool=directory
    )(store.save)


def test_a_segment_copied_beside_itself_is_left_alone_and_each_write_made_once(tmp_path: Path) -> None:
    segment = left_by_a_previous_process(tmp_path)
    copy = tmp_path / f"{segment.stem}-copy.log"
    shutil.copy(segment, copy)
    store = Store()
    store.down = False
    save = spooled(store, tmp_path)
    try:
        assert poll(lambda: len(save.spool) == 0, timeout=10)
        assert [key for key, _ in store.applied] == KEYS
        assert (save.spool.replayed, save.spool.dropped, save.spool.broken) == (3, 0, None)
        assert copy.exists()  # not ours: left for the operator
    finally:
        save.spool.close()


def test_a_record_that_is_not_a_spooled_write_is_dropped_and_counted_not_made(tmp_path: Path) -> None:
    segment = left_by_a_previous_process(tmp_path)
    with open(segment, "ab") as f:  # a whole, checksummed record of another shape
        f.write(journal_module._encode(4, b'{"id":"x","fn":"save","args":{"a":1},"kwargs":[]}'))
    store = Store()
    store.down = False
    save = spooled(store, tmp_path)
    try:
        assert poll(lambda: len(save.spool) == 0, timeout=10)
        assert [key for key, _ in store.applied] == KEYS
        assert (save.spool.replayed, save.spool.dropped) == (3, 1)
    finally:
        save.spool.close()


@pytest.mark.parametrize("mark", [2**64 - 1, 7])
def test_a_done_mark_past_every_record_breaks_the_spool_instead_of_dropping_them(
    tmp_path: Path, mark: int
) -> None:
    segment = left_by_a_previous_process(tmp_path)
    (tmp_path / "done.log").write_bytes(journal_module._done_mark(mark) * 2)
    store = Store()
    save = spooled(store, tmp_path)
    try:
        assert save.spool.broken is not None and f"marks #{mark} done" in save.spool.broken
        assert (len(save.spool), save.spool.dropped) == (0, 0)
        store.down = False
        assert save("new") == "saved new"  # the service still gets writes
        store.down = True
        with pytest.raises(ResourceExhausted):  # no receipt from a broken spool
            save("newer")
        assert segment.exists() and [key for key, _ in store.applied] == ["new"]
    finally:
        save.spool.close()


def test_an_unreadable_sync_spool_is_broken_and_writes_still_reach_the_service(tmp_path: Path) -> None:
    left_by_a_previous_process(tmp_path)
    (tmp_path / "done.log").unlink()
    (tmp_path / "done.log").mkdir()
    store = Store()
    store.down = False
    save = spooled(store, tmp_path)
    try:
        assert save.spool.broken is not None and "could not be read" in save.spool.broken
        assert save("new") == "saved new"
        assert (save.spool.dropped, len(list(tmp_path.glob("segment-*.log")))) == (0, 1)
    finally:
        save.spool.close()


def test_an_unreadable_async_spool_is_broken_and_writes_still_reach_the_service(tmp_path: Path) -> None:
    (tmp_path / "done.log").mkdir()
    made: list[str] = []

    async def save_async(key: str) -> str:
        made.append(key)
        return f"saved {key}"

    async def run() -> None:
        save = MissionControl("hostile", config={"storage_backend": POLICY}).guard(
            "storage_backend", spool=tmp_path
        )(save_async)
        try:
            assert [await save("a"), await save("b")] == ["saved a", "saved b"]
            assert save.spool.broken is not None and "could not be read" in save.spool.broken
        finally:
            save.spool.close()

    asyncio.run(run())
    assert made == ["a", "b"]


def left_with_a_record_nested_too_deep(directory: Path) -> None:
    """A whole, checksummed record whose JSON is nested past the parser's depth."""
    journal = Journal(directory)
    journal.append(encode_write("0" * 32, "save", ("before",), {}))
    journal.append(b"[" * 200_000 + b"]" * 200_000)
    journal.append(encode_write("1" * 32, "save", ("after",), {}))
    journal.close()


def test_a_record_nested_too_deep_to_read_is_dropped_and_counted_not_a_stall(tmp_path: Path) -> None:
    left_with_a_record_nested_too_deep(tmp_path)
    store = Store()
    store.down = False
    save = spooled(store, tmp_path)
    try:
        assert poll(lambda: len(save.spool) == 0, timeout=10)
        assert [key for key, _ in store.applied] == ["before", "after"]
        assert (save.spool.replayed, save.spool.dropped, save.spool.broken) == (2, 1, None)
    finally:
        save.spool.close()


def test_an_async_spool_drops_a_record_nested_too_deep_and_goes_on(tmp_path: Path) -> None:
    left_with_a_record_nested_too_deep(tmp_path)
    made: list[str] = []

    async def save_async(key: str) -> None:
        made.append(key)

    async def run() -> tuple[int, int]:
        save = MissionControl("hostile", config={"storage_backend": POLICY}).guard(
            "storage_backend", spool=tmp_path
        )(save_async)
        try:
            for _ in range(100):
                if not len(save.spool):
                    break
                await asyncio.sleep(0.1)
            return save.spool.replayed, save.spool.dropped
        finally:
            save.spool.close()

    assert asyncio.run(run()) == (2, 1)
    assert made == ["before", "after"]


def decorate_and_write(directory: Path) -> dict[str, Any]:
    """Decorate a write function on ``directory`` and make one write with storage up."""
    store = Store()
    store.down = False
    save = spooled(store, directory)
    try:
        return {"broken": save.spool.broken, "result": save("new"), "applied": [k for k, _ in store.applied]}
    finally:
        save.spool.close()


def as_nobody(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What ``action`` returns run in a forked child as the user nobody (root ignores file
    modes), or run here when this process is not root."""
    if os.geteuid() != 0:
        return action()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on
        code = 1
        try:
            os.close(read)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, json.dumps(action()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return json.loads(out)


NOBODY = 65534


def test_a_spool_directory_of_mode_000_is_broken_with_a_reason_and_writes_reach_the_service() -> None:
    base = Path(tempfile.mkdtemp(prefix="spool-mode-000-"))  # a place nobody can reach
    try:
        base.chmod(0o755)
        directory = base / "spool"
        directory.mkdir(mode=0)
        directory.chmod(0)
        seen = as_nobody(lambda: decorate_and_write(directory))
        assert seen["broken"] is not None and "could not be opened" in seen["broken"], seen
        assert "Permission denied" in seen["broken"]
        assert (seen["result"], seen["applied"]) == ("saved new", ["new"])
    finally:
        (base / "spool").chmod(0o700)
        shutil.rmtree(base)


def test_a_spool_path_that_is_a_file_is_broken_with_a_reason_and_writes_reach_the_service(
    tmp_path: Path,
) -> None:
    (tmp_path / "spool").write_text("not a directory")
    seen = decorate_and_write(tmp_path / "spool")
    assert seen["broken"] is not None and "could not be opened" in seen["broken"]
    assert (seen["result"], seen["applied"]) == ("saved new", ["new"])
