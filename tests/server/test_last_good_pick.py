"""The pick of a policy's last good value from its audit records, as pure logic: records placed
by the key revision they describe, the key's mark naming the newest, etcd's version of the key
counting its changes (the same records in etcd: tests/server/test_last_good_records.py)."""

from __future__ import annotations

import json

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.audit_read import AuditReader
from mission_control.server.last_good import NOT_KNOWN, pick
from mission_control.server.store import Entry

SERVICE = "storage_backend"
KEY = "/p x/policies/" + SERVICE  # a prefix with a space
MARK = "/p x/audited/policies/" + SERVICE


def _value(timeout: int) -> str:
    return json.dumps({"service": SERVICE, "timeout_secs": timeout})


def _record(
    own: int, wrote: str, *, names: int = 0, old: str = "", tail: str = "a"
) -> tuple[Entry, pb.AuditRecord]:
    """A record written at revision ``own``, of a change at ``names`` (0: its own)."""
    record = pb.AuditRecord(
        kind="policy", name=SERVICE, new_value=wrote, old_value=old, revision=names or own
    )
    return Entry(f"/p x-audit/policy/{own:020d}-{tail}", b"", own, own), record


def _refused(at: int, created: int, version: int) -> Entry:
    return Entry(KEY, b"{garbage", at, created, version=version)


def _mark(record: Entry, at: int, created: int, version: int, names: int = 0) -> Entry:
    value = f"{record.key} {names}" if names else record.key
    return Entry(MARK, value.encode(), at, created, version=version)


def test_a_mark_naming_a_record_under_a_prefix_with_spaces_is_read_whole() -> None:
    entry, _ = _record(4, _value(10))
    assert AuditReader.described(_mark(entry, 4, 4, 1)) == (entry.key, 4, True)
    assert AuditReader.described(_mark(entry, 9, 4, 2, names=7)) == (entry.key, 7, True)


def test_the_record_the_mark_names_is_the_pick_and_a_later_claim_is_set_aside() -> None:
    good = _record(4, _value(10))
    planted = _record(6, _value(1), tail="b")  # newer, naming a change the mark never saw
    found = pick(_refused(8, 4, 2), SERVICE, [good, planted], _mark(good[0], 4, 4, 1))
    assert (found.value, found.revision) == (_value(10).encode(), 4)


def test_a_mark_whose_record_is_gone_leaves_the_records_counted() -> None:
    good = _record(4, _value(10))
    lost = Entry("/p x-audit/policy/gone", b"", 4, 4)
    found = pick(_refused(8, 4, 2), SERVICE, [good], _mark(lost, 4, 4, 1))
    assert (found.value, found.revision) == (_value(10).encode(), 4)


def test_the_record_of_the_refused_value_names_the_value_recorded_before_it() -> None:
    good = _record(4, _value(10))
    disputed = _record(6, _value(1), names=4, tail="b")  # says revision 4 wrote 1 s
    refused = _record(9, "{garbage", names=8, old=_value(10), tail="c")
    found = pick(_refused(8, 4, 2), SERVICE, [good, disputed, refused], _mark(refused[0], 9, 4, 2, names=8))
    assert (found.value, found.revision) == (_value(10).encode(), 4)
    found = pick(_refused(8, 4, 2), SERVICE, [good, disputed], None)  # no mark: the claims alone
    assert (
        found.value is None
        and found.why == f"{NOT_KNOWN}: two audit records disagree on what revision 4 wrote"
    )


def test_a_change_no_record_names_leaves_the_last_good_value_unknown() -> None:
    good = _record(4, _value(10))
    found = pick(_refused(8, 4, 3), SERVICE, [good], _mark(good[0], 4, 4, 1))
    assert found.value is None and "1 of the 2 changes" in found.why, found
    created_bad = "the key was created with this value: none was in force before it"
    assert pick(_refused(8, 8, 1), SERVICE, [good], None).why == created_bad
    bad = _record(4, "{garbage-1")
    assert pick(_refused(8, 4, 2), SERVICE, [bad], _mark(bad[0], 4, 4, 1)).why == (
        "no good value was written since the key was created (revision 4) and before revision 8"
    )
