"""A summary naming a huge list of grants (a hostile agent: 600,000 names fit in a 4 MB
message) is weighed in one pass in C: before, each name was looked up in Python, 0.77 s
of the leader's event loop per summary, long enough with a few of them for the leader to
lose its etcd lease. And a grant named many times is one grant: it never lets a report
claim more results than the permits its agent was given."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from mission_control.client.breaker import CircuitBreaker
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.probe_results import known_results

POLICY = ServicePolicy("llm", failure_threshold=1, success_threshold=3, wait_duration_secs=1.0)


def half_open_with_a_permit() -> tuple[CircuitBreaker, int]:
    breaker = CircuitBreaker("llm", POLICY, 0.0)
    breaker.record(0.0, 0, 1)
    breaker.tick(1.0)
    assert breaker.acquire_probe(1.0, "a", ttl=5, number=41) == 1
    assert breaker.known_numbers("a") == {41}
    return breaker, 41


def python_calls(fn: Any) -> int:
    """How many Python functions ``fn()`` enters (C functions not counted)."""
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_a_grant_named_many_times_counts_once() -> None:
    breaker, number = half_open_with_a_permit()
    summary = pb.OutcomeSummary(service="llm", probe_successes=1000, probe_grants=[number] * 1000)
    assert known_results(breaker, "a", summary) == 1  # the old code: 1000
    other = pb.OutcomeSummary(service="llm", probe_successes=3, probe_grants=[number + 1, number + 2, 7])
    assert known_results(breaker, "a", other) == 0
    assert known_results(breaker, "b", summary) == 0  # another agent's name for it


def test_the_work_does_not_grow_with_the_names_in_python() -> None:
    breaker, number = half_open_with_a_permit()
    small = pb.OutcomeSummary(service="llm", probe_successes=2, probe_grants=[number, number + 1])
    names = list(range(1, 200_001))
    huge = pb.OutcomeSummary(service="llm", probe_successes=len(names), probe_grants=names)
    assert known_results(breaker, "a", huge) == 1
    # the old code entered one Python function per name (200,000 here)
    assert python_calls(lambda: known_results(breaker, "a", huge)) == python_calls(
        lambda: known_results(breaker, "a", small)
    )
