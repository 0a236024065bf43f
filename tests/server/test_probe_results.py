"""Probe results tied to their grant (I3 across an agent's reconnect; engine logic, with an
injected clock). An agent's stream breaks while its probe runs: the permit is not its any
more and the probe's result counts for no later permit; once the agent says (on its new
stream) that the probe still runs, it counts in flight until it ends or lapses. Until the
agent has said, the permit counts (tests/server/test_probe_gone.py). The real-process
cases are tests/server/test_probe_reconnect.py and test_probe_reset_gap.py."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

from .test_recovery_check_rules import Clock

POLICY = ServicePolicy(
    "llm", failure_threshold=1, success_threshold=2, wait_duration_secs=1.0, timeout_secs=8.0
)


def half_open(clock: Clock) -> tuple[FleetBreakers, list[tuple[str, int]]]:
    """A HALF_OPEN whose first permit agent "a" holds: (engine, grants as (agent, number))."""
    breakers = FleetBreakers(lambda name: POLICY, clock=clock, wall=lambda: 1.7e9)
    grants: list[tuple[str, int]] = []
    breakers.grant_listeners.append(lambda agent, grant: grants.append((agent, grant.number)))
    breakers.record("a", pb.OutcomeSummary(service="llm", failures=1, trailing_failures=1))
    clock.now += 1.0
    breakers.tick()
    assert breakers.get("llm").state is BreakerState.HALF_OPEN
    assert breakers.request_probe("a", "llm") is not None
    return breakers, grants


def result(number: int, *, failed: bool = False) -> pb.OutcomeSummary:
    summary = pb.OutcomeSummary(service="llm", probe_grants=[number])
    if failed:
        summary.probe_failures = 1
    else:
        summary.probe_successes = 1
    return summary


def test_an_earlier_probes_success_is_not_taken_for_a_new_permit() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breaker = breakers.get("llm")
    first = grants[0][1]
    breakers.release_agent("a")  # its stream broke while the probe ran
    breakers.holder_said("a")  # back, not having said it runs (an agent that does not say)
    assert breakers.request_probe("a", "llm") is not None
    second = grants[1][1]
    breakers.record("a", result(first))
    # before: the success counted, settled the new permit and let two more out
    assert breaker.half_open_successes == 0 and breaker.permits_of("a") == 1
    assert breakers.request_probe("b", "llm") is None
    breakers.record("a", result(second))
    assert breaker.half_open_successes == 1  # its own probe's: now two may run
    assert sorted(agent for agent, _ in grants[2:]) == ["a", "b"]


def test_a_probe_said_running_after_a_reconnect_counts_in_flight_until_it_ends() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breaker = breakers.get("llm")
    first = grants[0][1]
    breakers.release_agent("a")
    assert breaker.permits_out(clock.now) == 1  # until a says what it runs
    breakers.record("a", pb.OutcomeSummary(service="llm", probes_running=[first]))
    breakers.holder_said("a")
    assert breaker.permits_out(clock.now) == 1
    assert breakers.request_probe("a", "llm") is None  # no second one beside it
    assert breakers.request_probe("b", "llm") is None  # the first probe goes alone
    clock.now += 3.0
    breakers.record("a", result(first))
    assert breaker.half_open_successes == 0  # it no longer counts
    assert breaker.permits_out(clock.now) == 0
    assert breakers.request_probe("b", "llm") is not None


def test_a_probe_said_running_lapses_with_its_permits_hold() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breaker = breakers.get("llm")
    breakers.release_agent("a")
    breakers.record("a", pb.OutcomeSummary(service="llm", probes_running=[grants[0][1]]))
    clock.now += breakers.probe_ttl + POLICY.timeout_secs + 0.1  # from the grant
    assert breaker.permits_out(clock.now) == 0
    assert breakers.request_probe("a", "llm") is not None


def test_only_grants_the_agent_held_are_believed_running() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breaker = breakers.get("llm")
    breakers.release_agent("a")
    # another agent naming a's grant, or numbers never granted, blocks nobody
    breakers.record("b", pb.OutcomeSummary(service="llm", probes_running=[grants[0][1], 1, 2, 3]))
    breakers.record("a", pb.OutcomeSummary(service="llm", probes_running=[grants[0][1] + 7]))
    breakers.holder_said("b")
    assert breaker.permits_out(clock.now) == 1  # a has not said yet
    breakers.holder_said("a")
    assert breaker.permits_out(clock.now) == 0
    assert breakers.request_probe("b", "llm") is not None


def test_results_not_named_by_grant_count_by_the_permits_held() -> None:
    """An agent that does not name its grants (an older one) is counted as before."""
    clock = Clock()
    breakers, _ = half_open(clock)
    breakers.record("a", pb.OutcomeSummary(service="llm", probe_successes=1))
    assert breakers.get("llm").half_open_successes == 1


def test_a_failed_probe_under_its_own_grant_reopens() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breakers.record("a", result(grants[0][1], failed=True))
    assert breakers.get("llm").state is BreakerState.OPEN
