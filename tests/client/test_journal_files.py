"""Files named like the journal's that are not what they seem: a symbolic link (to a file
outside the spool), a FIFO, a huge file of garbage. A link is never followed (the file it
names is never cut or overwritten), a FIFO never blocks the open, anything not a regular
file leaves the journal ``broken`` with a reason naming it, and a segment is read in
bounded chunks, not whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from mission_control.client import MissionControl
from mission_control.client.journal import Journal, JournalBroken, Record
from mission_control.client.journal_format import encode

from tests.client.test_spool import POLICY

SEGMENT_1 = f"segment-{1:020d}.log"
PRECIOUS = b"the operator's data, not a journal\n" * 10


def outside(tmp_path: Path) -> Path:
    """A file outside the spool that a link in it points at."""
    path = tmp_path / "precious.txt"
    path.write_bytes(PRECIOUS)
    return path


def spool_dir(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    return spool


@pytest.mark.parametrize(
    "target", [PRECIOUS, encode(1, b"x") + b"TRAILING-OUTSIDE-DATA"], ids=["garbage", "a-record-and-a-tail"]
)
def test_a_segment_that_is_a_symbolic_link_is_not_followed(tmp_path: Path, target: bytes) -> None:
    spool, precious = spool_dir(tmp_path), outside(tmp_path)
    precious.write_bytes(target)
    os.symlink(precious, spool / SEGMENT_1)
    journal = Journal(spool)
    assert journal.broken is not None and f"{SEGMENT_1} is a symbolic link" in journal.broken
    assert len(journal) == 0
    with pytest.raises(JournalBroken):
        journal.append(b"new")
    journal.close()
    assert precious.read_bytes() == target  # never cut
    assert (spool / SEGMENT_1).is_symlink()


@pytest.mark.parametrize("name", ["done.log", "held.log"])
def test_done_or_held_log_as_a_symbolic_link_is_never_written_through(tmp_path: Path, name: str) -> None:
    spool, precious = spool_dir(tmp_path), outside(tmp_path)
    os.symlink(precious, spool / name)
    journal = Journal(spool)
    if name == "done.log":
        assert journal.broken is not None and "done.log is a symbolic link" in journal.broken
    else:
        journal.append(b"w")
        with pytest.raises(OSError, match=r"held\.log is a symbolic link"):
            journal.hold(Record(1, b"w"))
    journal.close()
    assert precious.read_bytes() == PRECIOUS


def test_a_new_segment_where_a_symbolic_link_waits_is_refused(tmp_path: Path) -> None:
    spool, precious = spool_dir(tmp_path), outside(tmp_path)
    journal = Journal(spool)
    os.symlink(precious, spool / SEGMENT_1)  # planted after the journal was read
    with pytest.raises(JournalBroken, match="symbolic link"):
        journal.append(b"w")
    journal.close()
    assert precious.read_bytes() == PRECIOUS


def within(seconds: float, action: Callable[[], object]) -> object:
    """What ``action`` returned, or fails the test when it blocks longer than ``seconds``."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(action()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"still blocked after {seconds} s"
    return out[0]


@pytest.mark.parametrize("name", [SEGMENT_1, "done.log"])
def test_a_fifo_named_like_a_journal_file_does_not_block_decorating(tmp_path: Path, name: str) -> None:
    spool = spool_dir(tmp_path)
    os.mkfifo(spool / name)
    guard = MissionControl("fifo", config={"storage_backend": POLICY}).guard("storage_backend", spool=spool)
    save = within(20, lambda: guard(lambda key: f"saved {key}"))
    try:
        assert save.spool.broken is not None and f"{name} is a FIFO" in save.spool.broken  # type: ignore[attr-defined]
        assert save("k") == "saved k"  # type: ignore[operator]
    finally:
        save.spool.close()  # type: ignore[attr-defined]


def test_a_fifo_where_the_next_segment_goes_refuses_the_append_at_once(tmp_path: Path) -> None:
    spool = spool_dir(tmp_path)
    journal = Journal(spool)
    os.mkfifo(spool / SEGMENT_1)

    def append() -> str:
        try:
            journal.append(b"w")
        except JournalBroken as exc:
            return str(exc)
        return "appended"

    assert "is a FIFO" in str(within(20, append))
    journal.close()


MEASURE = """
import resource, sys, logging
logging.disable(logging.CRITICAL)
from mission_control.client.journal import Journal
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
journal = Journal(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(journal), (after - before) // 1024)
"""


def test_a_huge_garbage_segment_is_read_in_bounded_chunks(tmp_path: Path) -> None:
    spool = spool_dir(tmp_path)
    size_mib = 64
    with open(spool / SEGMENT_1, "wb") as f:
        f.write(encode(1, b"kept"))
        for _ in range(size_mib):
            f.write(b"\0" * (1 << 20))
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(spool)], capture_output=True, text=True, check=True
    )
    pending, grown_mib = map(int, out.stdout.split())
    assert pending == 1
    assert grown_mib < size_mib // 4, f"reading a {size_mib} MiB segment grew the peak by {grown_mib} MiB"
