"""A breaker the engine makes for an agent's first report (or probe request) is pushed to
the agents at once, CLOSED: an agent connected before it existed was told of none in its
snapshot and would decide on its own local breaker until the first transition."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

from .test_recovery_check_rules import Clock

POLICY = ServicePolicy("llm", failure_threshold=3)


def engine() -> tuple[FleetBreakers, list[tuple[str, int, BreakerState | None]]]:
    breakers = FleetBreakers(lambda name: POLICY, clock=Clock(), wall=lambda: 1.7e9)
    pushed: list[tuple[str, int, BreakerState | None]] = []
    breakers.change_listeners.append(
        lambda message, old, move: pushed.append((message.name, message.state, old))
    )
    return breakers, pushed


def test_the_first_report_pushes_the_new_closed_breaker_once() -> None:
    breakers, pushed = engine()
    breakers.record("a", pb.OutcomeSummary(service="llm", successes=1))
    assert pushed == [("llm", pb.BREAKER_STATE_CLOSED, None)]
    breakers.record("b", pb.OutcomeSummary(service="llm", failures=1, trailing_failures=1))
    assert len(pushed) == 1  # counting toward a transition pushes nothing


def test_a_first_report_that_opens_it_pushes_the_transition_only() -> None:
    breakers, pushed = engine()
    breakers.record("a", pb.OutcomeSummary(service="llm", failures=3, trailing_failures=3))
    assert pushed == [("llm", pb.BREAKER_STATE_OPEN, BreakerState.CLOSED)]


def test_a_probe_request_for_a_breaker_not_held_pushes_it_closed() -> None:
    breakers, pushed = engine()
    assert breakers.request_probe("a", "llm") is None
    assert pushed == [("llm", pb.BREAKER_STATE_CLOSED, None)]
    breakers.request_probe("a", "llm")
    assert len(pushed) == 1
