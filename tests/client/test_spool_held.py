"""Held writes counted as what is held: once after a crash between holding a write and its
done mark, a held-<seq>.log deleted by hand logged and no longer counted, and a held
hard link that does not hide the deletion of the segment being appended to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mission_control.client import MissionControl
from mission_control.client.journal import Journal, JournalBroken
from mission_control.client.spool_common import encode_write

from tests.client.test_spool import POLICY, poll


def test_a_write_held_again_after_a_crash_before_its_done_mark_is_counted_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(2):
        journal.append(encode_write(f"{i:032x}", "save", (f"k{i}", {"n": i}), {}))
    journal.hold(next(journal.pending()))  # a process killed after this, before the done mark
    journal.close()
    made: list[str] = []

    def save(key: str) -> None:  # the new release takes one argument: both writes are held
        made.append(key)

    save_guarded = MissionControl("held", config={"storage_backend": POLICY}).guard(
        "storage_backend", spool=tmp_path
    )(save)
    spool = save_guarded.spool  # type: ignore[attr-defined]
    try:
        assert poll(lambda: len(spool) == 0, timeout=10)
        assert (spool.held, len(spool.held_writes()), spool.dropped, made) == (2, 2, 0, [])
    finally:
        spool.close()


def held_in_place(directory: Path) -> tuple[Journal, Path]:
    """A journal of two records whose first is held in place, as on a full disk: a hard
    link ``held-<seq>.log`` to its segment, then marked done."""
    journal = Journal(directory)
    journal.append(b"w1")
    journal.append(b"w2")
    (segment,) = directory.glob("segment-*.log")
    link = directory / f"held-{1:020d}.log"
    os.link(segment, link)
    journal.mark_done(1)
    return journal, segment


def test_a_held_file_deleted_by_hand_is_logged_and_no_longer_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal, _ = held_in_place(tmp_path)
    assert [record.seq for record in journal.held()] == [1] and journal.held_count == 1
    (tmp_path / f"held-{1:020d}.log").unlink()
    assert journal.held() == [] and journal.held_count == 0
    assert "held writes #1 are gone" in caplog.text
    journal.close()


def test_a_held_link_does_not_hide_that_the_segment_was_deleted(tmp_path: Path) -> None:
    journal, segment = held_in_place(tmp_path)
    segment.unlink()  # by hand: the held link keeps the file's link count at 1
    with pytest.raises(JournalBroken, match="was deleted"):
        journal.append(b"w3")
    assert journal.broken is not None and segment.name in journal.broken
    journal.close()
