"""Journals damaged by hand: a segment of hand-made record headers is read in time linear
in its size, a record whose checksum holds but whose seq no journal writes is refused and
counted, records known to have been written but lost are counted, and spool counts too large
for the report's fields are clamped."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mission_control.client.journal import Journal, JournalFull
from mission_control.client.view import Tally

HEADER = struct.Struct("<4sIIQ")


def payloads(journal: Journal) -> list[bytes]:
    return [r.payload for r in journal.pending()]


def hand_made(seq: int, payload: bytes) -> bytes:
    """A record whose checksum holds, with any seq (as an editor could write)."""
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    return HEADER.pack(b"MCS1", len(payload), crc, seq) + payload


def counting_crc32(monkeypatch: pytest.MonkeyPatch, bound: int) -> list[int]:
    """Count the bytes every crc32 is taken over; past ``bound`` fail at once."""
    checked = [0]
    real: Callable[..., int] = zlib.crc32

    def crc32(data: Any, value: int = 0) -> int:
        checked[0] += len(data)
        if checked[0] > bound:
            raise AssertionError(f"{checked[0]} bytes checksummed (bound {bound})")
        return real(data, value)

    monkeypatch.setattr(zlib, "crc32", crc32)
    return checked


def test_a_segment_of_headers_claiming_long_records_is_read_in_work_linear_in_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size, claimed = 256 * 1024, 100_000  # every 20 bytes a header claiming 100 kB
    header = HEADER.pack(b"MCS1", claimed, 12345, 1)
    segment = tmp_path / f"segment-{1:020d}.log"
    segment.write_bytes((header * (size // len(header) + 1))[:size])
    # checking every candidate over its claimed length is ~1.3 GB; linear: a few sizes
    checked = counting_crc32(monkeypatch, bound=8 * size)
    journal = Journal(tmp_path)
    assert len(journal) == 0 and journal.broken is None
    assert 0 < checked[0] <= 8 * size
    assert journal.corrupt > 0  # the headers after the first are records lost, counted
    assert segment.exists()  # what was not read is left for the operator
    journal.append(b"after")  # the journal keeps working, in a segment of its own
    journal.close()
    monkeypatch.undo()
    assert payloads(Journal(tmp_path)) == [b"after"]


def test_good_records_around_a_damaged_one_are_found_within_the_same_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path)
    for i in range(40):
        journal.append(b"x" * 1000 + str(i).encode())
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    checked = counting_crc32(monkeypatch, bound=8 * len(data))
    again = Journal(tmp_path)
    assert len(again) == 39 and again.corrupt == 1 and checked[0] <= 2 * len(data)


@pytest.mark.parametrize("seq", [2**64 - 1, 2**63 + 5, 2**63])
def test_a_record_with_a_seq_past_the_bound_is_refused_and_counted(tmp_path: Path, seq: int) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append(f"w{i}".encode())
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    with open(segment, "ab") as f:
        f.write(hand_made(seq, b"w0"))
    again = Journal(tmp_path)
    assert payloads(again) == [b"w0", b"w1", b"w2"] and again.corrupt == 1
    assert again.append(b"w3") == 4  # numbering carries on from the records of the journal
    assert again.append(b"w4") == 5
    again.close()
    assert payloads(Journal(tmp_path))[-2:] == [b"w3", b"w4"]


def test_a_journal_never_numbers_a_record_past_the_bound(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.next_seq = 2**63  # as if it had written that many
    with pytest.raises(JournalFull, match="most records"):
        journal.append(b"w")
    assert len(journal) == 0


def test_a_segment_cut_and_a_later_one_emptied_count_the_records_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path, segment_bytes=200)  # a few records a segment
    for i in range(12):
        journal.append(f"write-{i:02d}".encode())
    journal.close()
    first, *_, last = sorted(tmp_path.glob("segment-*.log"))
    first_seq = int(last.name[8:28])
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # cut by hand, in the middle of a record
    for segment in sorted(tmp_path.glob("segment-*.log"))[1:]:
        segment.write_bytes(b"")  # emptied by hand: only their names are left
    with caplog.at_level(logging.ERROR, "mission_control.client.spool"):
        again = Journal(tmp_path)
    kept = len(again)
    assert 0 < kept < first_seq - 1
    # every record before the last segment's first is known to have been written
    assert again.corrupt == first_seq - 1 - kept
    assert any("lost records" in r.getMessage() for r in caplog.records)


def test_whole_records_damaged_at_the_end_of_the_last_segment_are_counted(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(10):
        journal.append(f"write-{i}".encode())
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    record = len(data) // 10
    for k in (7, 8, 9):  # a byte of each of the last three payloads
        data[(k + 1) * record - 1] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = Journal(tmp_path)
    assert len(again) == 7
    # the last damaged record could be a write torn by a crash; the two before it were whole
    assert again.corrupt == 2


def test_a_torn_last_record_alone_is_not_counted(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        journal.append(f"write-{i}".encode())
    journal.close()
    segment = next(tmp_path.glob("segment-*.log"))
    with open(segment, "ab") as f:  # a kill -9 in the middle of the fourth append
        f.write(hand_made(4, b"write-3")[:-3])
    again = Journal(tmp_path)
    assert len(again) == 3 and again.corrupt == 0


def test_spool_counts_past_the_report_fields_are_clamped() -> None:
    tally = Tally()
    tally.spooled = tally.spool_replayed = tally.spool_dropped = tally.spool_held = 2**40
    summary = tally.to_proto("storage_backend")  # raised ValueError: a uint32 field
    assert summary.spool_dropped == summary.spooled == summary.spool_replayed == 2**32 - 1
    assert summary.spool_held == 2**32 - 1
