"""Probes still running when a failed probe ends their HALF_OPEN count against the next one
(I3): with several permits out at once (a HALF_OPEN a check began, or one a check widened),
the failure of one does not end the others' calls, and a check answering SERVING again at
once must not send success_threshold more beside them."""

from __future__ import annotations

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

from .test_recovery_check_rules import Clock, asking, waited_half_open


def _fail_one_and_half_open_again(first_failure: str) -> tuple[Clock, FleetBreakers, list[str], set[str]]:
    clock = Clock()
    breakers, grants = waited_half_open(clock)  # success_threshold 3, the lone probe out
    assert breakers.widen("llm") and len(grants) == 3
    running = set(grants)
    failed = grants[0] if first_failure == "lone" else grants[1]
    clock.now += 0.1
    breakers.record(failed, pb.OutcomeSummary(service="llm", probe_failures=1))
    running.discard(failed)
    assert breakers.get("llm").state is BreakerState.OPEN
    clock.now += 0.02  # the next check: the endpoint says SERVING again
    assert breakers.recover("llm", "recovery check: SERVING") is not None
    asking(breakers, ["e", "f", "g", "h", *running])
    return clock, breakers, grants, running


@pytest.mark.parametrize("first_failure", ["lone", "joined"])
def test_probes_still_running_from_a_failed_half_open_count_against_the_next(first_failure: str) -> None:
    _, _, grants, running = _fail_one_and_half_open_again(first_failure)
    new = grants[3:]
    assert len(running) + len(new) <= 3, (running, new)  # the code before: 2 + 3
    assert not running & set(new)  # an agent whose earlier probe runs gets no second


def test_their_results_free_the_permits_for_the_next_half_open() -> None:
    clock, breakers, grants, running = _fail_one_and_half_open_again("lone")
    assert len(grants) == 4  # one new permit beside the two still running
    old_generation = breakers.get("llm").generation - 2  # the widened HALF_OPEN's
    for agent in sorted(running):
        clock.now += 0.05
        breakers.record(
            agent, pb.OutcomeSummary(service="llm", probe_successes=1, probe_generation=old_generation)
        )
    asking(breakers, ["e", "f", "g", "h"])
    assert len(grants) == 6 and breakers.get("llm").permits_out(clock.now) == 3


def test_their_permits_lapse_with_their_hold() -> None:
    clock, breakers, _, _ = _fail_one_and_half_open_again("lone")
    breaker = breakers.get("llm")
    assert breaker.permits_out(clock.now) == 3
    clock.now += breakers.probe_ttl + breaker.policy.timeout_secs + 0.1
    assert breaker.permits_out(clock.now) == 0  # expired, not held for ever
