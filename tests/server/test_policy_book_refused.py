"""PolicyBook's refused values: which ones the store still holds, and what is in force."""

from __future__ import annotations

import json

from mission_control.server.policies import PolicyBook

KEY = "/p/policies/svc"
GOOD = json.dumps({"service": "svc", "timeout_secs": 10}).encode()
OTHER = json.dumps({"service": "svc", "timeout_secs": 7}).encode()


def test_a_refused_value_is_held_until_its_key_holds_another() -> None:
    book = PolicyBook("/p")
    book.apply(KEY, GOOD, 3)
    book.apply(KEY, b"{bad", 5)
    assert [(e.key, e.revision) for e in book.refused_now()] == [(KEY, 5)]
    assert "revision 5: " in book.errors[0].error and "(revision 3)" in book.errors[0].error
    assert book.stored("svc") == (book.policy_of("svc"), 3)  # the value in force, its revision
    assert book.revision_of("svc") == 5  # what a compare-and-swap names
    book.apply(KEY, OTHER, 6)
    assert book.refused_now() == [] and [e.revision for e in book.refused_past()] == [5]
    book.apply(KEY, b"{bad again", 8)
    assert [e.revision for e in book.refused_now()] == [8]
    assert [e.revision for e in book.refused_past()] == [5]
    book.apply(KEY, None, 9)
    assert book.refused_now() == [] and len(book.refused_past()) == 2


def test_a_reload_of_a_refused_value_counts_it_once() -> None:
    book = PolicyBook("/p")
    book.apply(KEY, GOOD, 3)
    book.apply(KEY, b"{bad", 5)
    book.apply(KEY, b"{bad", 5)  # the same revision read again (a reload)
    assert book.reloads_failed == 1 and len(book.errors) == 1


def test_an_earlier_value_put_in_force_restates_the_refusal() -> None:
    book = PolicyBook("/p")
    book.apply(KEY, b"{bad", 5)  # a start: nothing good held yet
    assert "in force: the defaults" in book.errors[-1].error
    assert book.keep_earlier(KEY, GOOD, 3, 5, "the last good value, from the audit records")
    [line] = book.errors
    assert line.revision == 5 and line.error.startswith("revision 5: ")
    assert line.error.endswith("in force: the last good value, from the audit records (revision 3)")
    assert book.stored("svc") is not None and book.stored("svc")[1] == 3  # type: ignore[index]
    assert book.refused_now() == [line]


def test_a_breaker_record_is_held_refused_until_cleared() -> None:
    book = PolicyBook("/p")
    book.refused("/p/breakers/b", "malformed", 4)
    book.refused("/p/epoch", "no revision known")
    assert [e.key for e in book.refused_now()] == ["/p/breakers/b"]
    book.cleared("/p/breakers/b")
    assert book.refused_now() == [] and [e.key for e in book.refused_past()] == ["/p/breakers/b"]
