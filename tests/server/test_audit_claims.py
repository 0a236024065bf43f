"""A key's claim (the changes from outside recorded for it) as read back: one put from
outside never keeps a change to come from being recorded, and never breaks the reader."""

from __future__ import annotations

import json

import pytest
from mission_control.server.audit_seen import CLAIMED, Claim
from mission_control.server.store import Entry


def _claim(value: bytes, at: int = 100) -> Claim:
    return Claim.parse(Entry("k", value, at, 1))


@pytest.mark.parametrize(
    "value",
    [b"", b"not json", b"\xff\xfe", b"[]", b'"x"', b"null", b'{"record": 1, "revisions": [1]}',
     b'{"record": "r"}', b'{"record": "r", "revisions": {"1": 2}}', b"[" * 100_000],
)  # fmt: skip
def test_a_claim_that_does_not_parse_counts_as_empty(value: bytes) -> None:
    assert _claim(value).revisions == ()


def test_a_claim_names_only_revisions_before_its_own() -> None:
    value = json.dumps({"record": "r", "revisions": [5, 99, 100, 101, 10**9, -3, 0, True, 7.0, "8"]})
    assert _claim(value.encode()) == Claim("r", (5, 99))


def test_a_claim_keeps_the_newest_revisions_only() -> None:
    written = Claim().adding("r", 1)
    for revision in range(2, 200):
        written = Claim.parse(Entry("k", written, revision + 1, 1)).adding("r", revision)
    claim = Claim.parse(Entry("k", written, 1000, 1))
    assert claim.revisions == tuple(range(200 - CLAIMED, 200))
    assert claim.record == "r"


def test_a_huge_claim_is_not_read() -> None:
    value = json.dumps({"record": "r", "revisions": list(range(1, 10_000))}).encode()
    assert _claim(value, at=10**6).revisions == ()
