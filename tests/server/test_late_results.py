"""The probe part of a relay's batch the leader counted already (server/late_results.py):
named results and give-backs by grant only, never the calls again."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.late_results import probe_parts


def test_only_named_results_and_give_backs_are_taken() -> None:
    named = pb.OutcomeSummary(
        service="a", successes=5, failures=3, probe_generation=2, probe_failures=1, probe_successes=1
    )
    named.probe_grants.extend([11, 12])
    unnamed = pb.OutcomeSummary(service="b", failures=4, probe_successes=1)  # no grant named
    given_back = pb.OutcomeSummary(service="c", rejected=2)
    given_back.released_grants.append(13)
    calls_only = pb.OutcomeSummary(service="d", failures=9)
    parts = probe_parts([named, unnamed, given_back, calls_only])
    assert [p.service for p in parts] == ["a", "c"]
    first, second = parts
    assert (first.probe_generation, first.probe_failures, first.probe_successes) == (2, 1, 1)
    assert list(first.probe_grants) == [11, 12]
    assert (first.successes, first.failures) == (0, 0)
    assert list(second.released_grants) == [13] and second.rejected == 0
