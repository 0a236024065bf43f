"""Records a journal finds lost are counted once, however often it is opened before it
drains past them (``lost.log``, client/journal_lost.py); a spool reopened reports them
once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mission_control.client import MissionControl
from mission_control.client.journal import Journal
from mission_control.client.journal_lost import lost_ranges, not_in

from tests.client.test_journal_damage import hand_made, payloads
from tests.client.test_spool import POLICY, Store, spooled_save


def damage(directory: Path, payload: bytes) -> None:
    """Flip a byte of the record holding ``payload``."""
    for segment in directory.glob("segment-*.log"):
        data = bytearray(segment.read_bytes())
        at = data.find(payload)
        if at >= 0:
            data[at] ^= 0xFF
            segment.write_bytes(bytes(data))
            return
    raise AssertionError(f"no record holds {payload!r}")


def six_writes(directory: Path) -> None:
    journal = Journal(directory, segment_bytes=80)  # three records a segment
    for i in range(6):
        journal.append(f"write-{i}".encode())
    journal.close()


def opened(directory: Path) -> tuple[list[bytes], int]:
    journal = Journal(directory, segment_bytes=80)
    try:
        return payloads(journal), journal.corrupt
    finally:
        journal.close()


def test_lost_records_are_counted_at_the_first_opening_only(tmp_path: Path) -> None:
    six_writes(tmp_path)
    damage(tmp_path, b"write-0")
    damage(tmp_path, b"write-3")
    kept = [b"write-1", b"write-2", b"write-4", b"write-5"]
    assert opened(tmp_path) == (kept, 2)
    assert opened(tmp_path) == (kept, 0)  # the same two: counted already
    assert opened(tmp_path) == (kept, 0)
    damage(tmp_path, b"write-1")  # lost since: counted, and only it
    assert opened(tmp_path) == ([b"write-2", b"write-4", b"write-5"], 1)
    journal = Journal(tmp_path, segment_bytes=80)
    journal.mark_done(5)  # past every lost record
    journal.close()
    assert opened(tmp_path) == ([b"write-5"], 0)


def test_a_refused_record_is_counted_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append(f"w{i}".encode())
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    with open(segment, "ab") as f:
        f.write(hand_made(2**63, b"w0"))
    assert opened(tmp_path)[1] == 1
    assert opened(tmp_path)[1] == 0
    with open(segment, "ab") as f:
        f.write(hand_made(2**63 + 1, b"w0"))  # another one
    assert opened(tmp_path)[1] == 1


@pytest.mark.parametrize("content", [b"", b"MCLOST1\n" + b"\0" * 20, b"not ours at all"])
def test_a_damaged_count_counts_again_and_says_so(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    six_writes(tmp_path)
    damage(tmp_path, b"write-3")
    assert opened(tmp_path)[1] == 1
    (tmp_path / "lost.log").write_bytes(content)
    with caplog.at_level(logging.ERROR, "mission_control.client.spool"):
        assert opened(tmp_path)[1] == 1  # a count too high rather than a loss unsaid
    assert any("lost.log is damaged" in r.getMessage() for r in caplog.records)
    assert opened(tmp_path)[1] == 0  # and kept again


def test_ranges_of_lost_seqs() -> None:
    assert lost_ranges(0, [2, 3, 7], 9) == [(1, 1), (4, 6), (8, 9)]
    assert lost_ranges(5, [6, 7], 7) == []
    assert not_in([(1, 1), (4, 6), (8, 9)], [(4, 5), (9, 12)]) == 3  # 1, 6 and 8
    assert not_in([(1, 10)], [(2, 3), (5, 5), (9, 20)]) == 5
    assert not_in([(1, 3)], []) == 3


def test_a_spool_reopened_before_it_drains_reports_its_lost_writes_once(tmp_path: Path) -> None:
    store = Store()  # down: nothing drains
    for attempt in range(3):
        mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
        save = spooled_save(mc, store, tmp_path)
        if attempt == 0:
            for i in range(4):
                save(f"key-{i}")
        dropped = save.spool.dropped, mc.view.get("storage_backend").tally.spool_dropped
        mc.close()
        if attempt == 0:
            assert dropped == (0, 0)
            damage(tmp_path, b"key-1")
        elif attempt == 1:
            assert dropped == (1, 1)
        else:
            assert dropped == (0, 0)  # counted before: the journal has not drained past it
