"""The spool's journal on a real disk: order, done marks, the bound, torn and corrupt records."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from mission_control.client.journal import Journal, JournalFull, JournalLocked


def payloads(journal: Journal) -> list[bytes]:
    return [r.payload for r in journal.pending()]


def test_records_come_back_in_order_after_reopening(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    seqs = [journal.append(f"w{i}".encode()) for i in range(5)]
    journal.mark_done(seqs[1])
    journal.close()
    again = Journal(tmp_path)
    assert payloads(again) == [b"w2", b"w3", b"w4"]
    assert again.append(b"w5") == seqs[-1] + 1  # a seq is never given twice


def test_a_torn_last_record_is_dropped_and_appends_follow_the_last_whole_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(b"first")
    journal.append(b"second")
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # a kill -9 in the middle of the third append
        f.write(b"MCS1\x40\x00\x00\x00torn")
    again = Journal(tmp_path)
    assert payloads(again) == [b"first", b"second"]
    assert segment.stat().st_size == whole
    again.append(b"third")
    again.close()
    assert payloads(Journal(tmp_path)) == [b"first", b"second", b"third"]


def test_a_record_that_fails_its_checksum_is_cut_with_what_follows(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append(f"write-{i}".encode())
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last payload
    segment.write_bytes(bytes(data))
    assert payloads(Journal(tmp_path)) == [b"write-0", b"write-1"]


def test_a_corrupt_record_in_the_middle_is_skipped_counted_and_the_rest_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=80)  # three records a segment
    for i in range(6):
        journal.append(f"write-{i}".encode())
    journal.close()
    segments = sorted(tmp_path.glob("segment-*.log"))
    for segment in segments[:2]:
        data = bytearray(segment.read_bytes())
        data[22] ^= 0xFF  # a byte of the segment's first payload
        segment.write_bytes(bytes(data))
    again = Journal(tmp_path)
    assert payloads(again) == [b"write-1", b"write-2", b"write-4", b"write-5"]
    assert again.corrupt == 2
    again.mark_done(4)
    again.close()
    reopened = Journal(tmp_path)
    assert payloads(reopened) == [b"write-4", b"write-5"] and reopened.corrupt == 0
    reopened.close()


def test_a_torn_done_mark_is_dropped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    first = journal.append(b"a")
    journal.append(b"b")
    journal.mark_done(first)
    journal.close()
    with open(tmp_path / "done.log", "ab") as f:
        f.write(b"MCD1\x02")
    again = Journal(tmp_path)
    assert payloads(again) == [b"b"]
    again.mark_done(first + 1)
    again.close()
    assert payloads(Journal(tmp_path)) == []


def test_the_bound_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_records=2, max_bytes=1000)
    journal.append(b"x")
    journal.append(b"y")
    with pytest.raises(JournalFull, match="full"):
        journal.append(b"z")
    journal.mark_done(journal.first().seq)  # type: ignore[union-attr]
    journal.append(b"z")
    assert payloads(journal) == [b"y", b"z"]
    with pytest.raises(JournalFull):
        Journal(tmp_path / "small", max_bytes=10).append(b"more than ten bytes")


def test_done_segments_are_deleted_and_the_marks_file_keeps_its_size(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=64)
    seqs = [journal.append(b"0123456789" * 4) for _ in range(200)]
    for seq in seqs[:-1]:
        journal.mark_done(seq)
    assert len(list(tmp_path.glob("segment-*.log"))) <= 2
    assert (tmp_path / "done.log").stat().st_size == 2 * 16  # two slots, written in place
    journal.close()
    again = Journal(tmp_path)
    assert payloads(again) == [b"0123456789" * 4]
    again.mark_done(seqs[-1])  # the spool is empty: its last segment goes too
    assert list(tmp_path.glob("segment-*.log")) == []
    assert again.append(b"after") == seqs[-1] + 1
    again.close()
    assert payloads(Journal(tmp_path)) == [b"after"]


def test_marks_of_an_older_done_file_are_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    seqs = [journal.append(b"w") for _ in range(4)]
    journal.close()
    marks = [struct.pack("<4sQI", b"MCD1", seq, zlib.crc32(struct.pack("<Q", seq))) for seq in (1, 3, 2)]
    (tmp_path / "done.log").write_bytes(b"".join(marks) + b"MCD1\x02")  # appended marks, a torn one
    again = Journal(tmp_path)
    assert [r.seq for r in again.pending()] == [seqs[3]]
    assert (tmp_path / "done.log").stat().st_size == 2 * 16
    again.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    with pytest.raises(JournalLocked, match="another process"):
        Journal(tmp_path)
    journal.close()
    Journal(tmp_path).close()


_OPEN_AND_HOLD = """
import sys
from mission_control.client.journal import Journal, JournalLocked
try:
    journal = Journal(sys.argv[1])
except JournalLocked as locked:
    print("locked", locked, flush=True)
    sys.exit(0)
print("open", flush=True)
sys.stdin.read()
"""


def test_a_second_process_is_kept_out_even_when_a_lock_file_is_deleted(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _OPEN_AND_HOLD, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        for name in ("lock", "done.log"):  # what an operator or a cleaner might delete
            (tmp_path / name).unlink(missing_ok=True)
        second = subprocess.run(
            [sys.executable, "-c", _OPEN_AND_HOLD, str(tmp_path)],
            input="", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.stdout.startswith("locked"), (second.stdout, second.stderr)
    finally:
        holder.communicate("", timeout=60)


_FILL_THE_DISK = """
import resource, signal, sys
from mission_control.client.journal import Journal, JournalFull
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
journal = Journal(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.RLIM_INFINITY))
for i in range(3):
    try:
        print("kept", journal.append(bytes([65 + i]) * 100))  # 120 bytes a record
    except JournalFull as full:
        print("full", full)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("kept", journal.append(b"D" * 100))
"""


def test_a_short_write_on_a_full_disk_is_rolled_back_and_refused(tmp_path: Path) -> None:
    # A file-size limit makes the kernel write part of the third record, then fail: a disk
    # filling up does the same.
    run = subprocess.run(
        [sys.executable, "-c", _FILL_THE_DISK, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:2] == ["kept 1", "kept 2"] and lines[3] == "kept 3", lines
    assert lines[2].startswith("full ") and "the disk is full" in lines[2], lines
    journal = Journal(tmp_path)
    assert payloads(journal) == [b"A" * 100, b"B" * 100, b"D" * 100]  # nothing torn, nothing cut
    journal.close()


_MARK_THEN_DIE = """
import os, signal, sys
from mission_control.client.journal import Journal
journal = Journal(sys.argv[1])
seqs = [journal.append(f"w{i}".encode()) for i in range(3)]
journal.mark_done(seqs[1], sync=False)
assert journal.unsynced
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_done_mark_not_fsynced_yet_survives_kill_9(tmp_path: Path) -> None:
    died = subprocess.run(
        [sys.executable, "-c", _MARK_THEN_DIE, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert died.returncode == -9, died.stderr
    again = Journal(tmp_path)
    assert payloads(again) == [b"w2"]
    again.mark_done(3, sync=False)
    again.sync_done()
    assert not again.unsynced and len(again) == 0


def test_files_named_with_other_scripts_digits_are_left_alone(tmp_path: Path) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` raises: such a name once made opening
    the journal (a segment) or reading its held records (held-) raise ValueError."""
    journal = Journal(tmp_path)
    journal.append(b"w1")
    journal.close()
    (segment,) = tmp_path.glob("segment-*.log")
    (tmp_path / f"segment-{'²' * 20}.log").write_bytes(segment.read_bytes())
    (tmp_path / f"held-{'²' * 20}.log").write_bytes(segment.read_bytes())
    again = Journal(tmp_path)
    assert (again.broken, payloads(again), again.held()) == (None, [b"w1"], [])
    again.close()


def test_reopening_a_partly_done_journal_logs_a_repeat_only_for_a_real_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append(f"w{i}".encode())
    journal.mark_done(1)
    journal.close()
    again = Journal(tmp_path)
    assert payloads(again) == [b"w1", b"w2"]
    again.close()
    assert "repeats records" not in caplog.text  # one segment, partly done: nothing repeated
    (segment,) = tmp_path.glob("segment-*.log")
    (tmp_path / f"segment-{2:020d}.log").write_bytes(segment.read_bytes())  # records 1-3 again
    repeated = Journal(tmp_path)
    assert payloads(repeated) == [b"w1", b"w2"]  # read once
    repeated.close()
    assert caplog.text.count("repeats records of an earlier segment") == 1
