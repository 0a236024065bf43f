"""When changes recorded from outside trigger the audit prune, as pure logic (against etcd:
tests/server/test_audit_hand_edits.py): once they are a tenth of the count bound (one at
least), or a tenth of the age bound after the last prune — never each of a few hand edits."""

from __future__ import annotations

from mission_control.server.audit import Retention
from mission_control.server.audit_keeper import prune_due


def test_a_tenth_of_the_count_bound_triggers_the_prune() -> None:
    bounds = Retention(max_records=1000, max_age_secs=30 * 86400.0)
    assert not prune_due(bounds, 99, 60.0)  # a few hand edits: no prune each
    assert prune_due(bounds, 100, 60.0)
    assert prune_due(Retention(max_records=3), 1, 0.0)  # a small bound: every one


def test_a_tenth_of_the_age_bound_after_the_last_prune_triggers_it() -> None:
    bounds = Retention(max_records=1000, max_age_secs=100.0)
    assert not prune_due(bounds, 1, 9.9)
    assert prune_due(bounds, 1, 10.0)
    assert not prune_due(bounds, 1, 0.0)  # none ended yet: the one at the start is due anyway
