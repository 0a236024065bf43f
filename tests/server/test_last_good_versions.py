"""The pick of a policy's last good value told by the etcd version a record names, as pure
logic: the record of the version right before the refused one is the pick whatever happened
before it, and records that do not fit etcd's versions or the key's mark leave it unknown
(against etcd: tests/server/test_last_good_unwatched.py)."""

from __future__ import annotations

import json

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.last_good import NOT_KNOWN, pick
from mission_control.server.store import Entry

SERVICE = "storage_backend"
KEY = "/p/policies/" + SERVICE
MARK = "/p/audited/policies/" + SERVICE
GARBAGE = "{garbage"


def _value(timeout: int) -> str:
    return json.dumps({"service": SERVICE, "timeout_secs": timeout})


def _outside(
    own: int, names: int, version: int, wrote: str, old: str = "", tail: str = "a"
) -> tuple[Entry, pb.AuditRecord]:
    """A record of a change from outside at ``names`` (the key's ``version`` after it),
    written at revision ``own``."""
    record = pb.AuditRecord(
        kind="policy", name=SERVICE, new_value=wrote, old_value=old, revision=names, version=version
    )
    return Entry(f"/p-audit/policy/{own:020d}-{tail}", b"", own, own), record


def _refused(at: int, created: int, version: int) -> Entry:
    return Entry(KEY, GARBAGE.encode(), at, created, version=version)


def _mark(record: Entry, names: int, at: int, created: int, version: int) -> Entry:
    return Entry(MARK, f"{record.key} {names}".encode(), at, created, version=version)


# Three puts while no control plane ran (revisions 5, 6, 7: versions 1, 2, 3), the last
# recorded at the start (revision 8); a refused put at 9 (version 4).
LAST = _outside(8, 7, 3, _value(7))


def test_the_record_of_the_version_before_the_refused_one_is_the_pick() -> None:
    found = pick(_refused(9, 5, 4), SERVICE, [LAST], _mark(LAST[0], 7, 8, 8, 1))
    assert (found.value, found.revision, found.why) == (_value(7).encode(), 7, "")
    # recorded from outside too (the mark names its record, which says what it replaced)
    refused = _outside(10, 9, 4, GARBAGE, old=_value(7), tail="b")
    found = pick(_refused(9, 5, 4), SERVICE, [LAST, refused], _mark(refused[0], 9, 10, 8, 2))
    assert (found.value, found.revision) == (_value(7).encode(), 7)


def test_without_the_version_the_changes_are_counted_as_before() -> None:
    old = _outside(8, 7, 0, _value(7))  # a record of an earlier version: no version
    found = pick(_refused(9, 5, 4), SERVICE, [old], _mark(old[0], 7, 8, 8, 1))
    assert found.value is None and "2 of the 3 changes" in found.why, found


def test_a_refused_value_before_is_passed_for_the_good_one_before_it() -> None:
    first = _outside(8, 7, 3, _value(7))
    bad = _outside(11, 10, 4, "{bad", old=_value(7), tail="b")
    found = pick(_refused(12, 5, 5), SERVICE, [first, bad], _mark(bad[0], 10, 11, 8, 2))
    assert (found.value, found.revision) == (_value(7).encode(), 7)
    # the version before that one has no record: counted (3 changes, 2 recorded)
    found = pick(_refused(12, 5, 5), SERVICE, [bad], _mark(bad[0], 10, 11, 11, 1))
    assert found.value is None and found.why.startswith(NOT_KNOWN), found


def test_records_that_do_not_fit_the_versions_leave_it_unknown() -> None:
    mark = _mark(LAST[0], 7, 8, 8, 1)
    cases = {
        # another value for the same version
        "disagree on what made the key's version 3": [LAST, _outside(12, 7, 3, _value(1), tail="b")],
        # version 3 two revisions after the creation at 5 cannot be at 6
        "etcd cannot have": [_outside(8, 6, 3, _value(7))],
        # version 4 is the refused one's, at 9: a version 5 before it cannot be
        "made the key's version 5: etcd cannot have": [LAST, _outside(12, 7, 5, _value(7), tail="b")],
        # version 4 is the refused one's, at 9
        "disagree on what made the key's version 4": [LAST, _outside(12, 7, 4, _value(7), tail="b")],
    }
    for why, records in cases.items():
        found = pick(_refused(9, 5, 4), SERVICE, records, mark)
        assert found.value is None and found.why.startswith(NOT_KNOWN) and why in found.why, (why, found)
    # A record naming no version that does not fit them (another value at version 3's
    # revision; a change at 8, between version 2 at 7 and version 3 at 9, where etcd made
    # none): the versions tell nothing, the changes are counted as before — here 1 of 3
    # changes recorded (unknown), there every one, the mark naming the newest (its pick).
    found = pick(_refused(9, 5, 4), SERVICE, [LAST, _plain(13, 7)], mark)
    assert found.value is None and "2 of the 3 changes" in found.why, found
    last, before = _outside(10, 9, 3, _value(9)), _outside(11, 7, 2, _value(7), tail="b")
    found = pick(_refused(12, 5, 4), SERVICE, [last, before, _plain(13, 8)], _mark(last[0], 9, 10, 8, 1))
    assert (found.value, found.revision) == (_value(9).encode(), 9), found


def _plain(own: int, names: int) -> tuple[Entry, pb.AuditRecord]:
    """A record naming no version, saying the change at ``names`` wrote 1 s."""
    record = pb.AuditRecord(kind="policy", name=SERVICE, new_value=_value(1), revision=names)
    return Entry(f"/p-audit/policy/{own:020d}-p", b"", own, own), record


def test_a_record_the_mark_does_not_stand_for_is_not_picked() -> None:
    planted = _outside(12, 7, 3, _value(1), tail="b")  # the genuine record is pruned
    # the mark names the refused change's record, which replaced 7 s, not 1 s
    refused = _outside(10, 9, 4, GARBAGE, old=_value(7), tail="c")
    found = pick(_refused(9, 5, 4), SERVICE, [planted, refused], _mark(refused[0], 9, 10, 8, 2))
    assert found.value is None and "replaced another value" in found.why, found
    # the mark names an earlier change than the one the record says
    earlier = _outside(8, 6, 2, _value(6))
    found = pick(_refused(9, 5, 4), SERVICE, [earlier, planted], _mark(earlier[0], 6, 8, 8, 1))
    assert found.value is None and "mark does not name" in found.why, found
    # no mark at all
    found = pick(_refused(9, 5, 4), SERVICE, [planted], None)
    assert found.value is None and found.why.startswith(NOT_KNOWN), found
