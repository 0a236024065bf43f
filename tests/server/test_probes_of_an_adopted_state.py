"""Probes under the permits of a HALF_OPEN that a state read from the store replaced still
run: they count against the next HALF_OPEN (I3), as after a failed probe. A leader whose
own write was stored but answered late read back its failed probe's OPEN over the HALF_OPEN
it had decided since, forgot the three permits out in it and granted three more."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

from .test_recovery_check_rules import Clock, asking, waited_half_open

WAITING = ["b", "c", "d", "e", "f", "g", "h"]


def _read_back_over_a_half_open() -> tuple[Clock, FleetBreakers, list[str], set[str]]:
    clock = Clock()
    breakers, grants = waited_half_open(clock)  # success_threshold 3, gen 2, the lone probe out
    breaker = breakers.get("llm")
    clock.now += 0.1
    breakers.record(grants[0], pb.OutcomeSummary(service="llm", probe_failures=1))
    assert breaker.state is BreakerState.OPEN
    stored = breakers.to_record("llm")  # this OPEN is stored; its answer is lost
    clock.now += breaker.open_remaining(clock.now) - 0.5
    asking(breakers, WAITING)
    clock.now += 0.5
    breakers.tick()  # HALF_OPEN again, from memory
    half_open = breaker.generation
    clock.now += 0.2
    breakers.record(
        grants[1], pb.OutcomeSummary(service="llm", probe_successes=1, probe_generation=half_open)
    )
    running = set(grants[2:])
    assert len(running) == 3 and breaker.permits_out(clock.now) == 3
    clock.now += 0.3
    breakers.adopt("llm", stored, 11)  # the stored OPEN read back over the HALF_OPEN
    assert breaker.state is BreakerState.OPEN
    asking(breakers, WAITING)
    breakers.tick()  # the OPEN's wait is over: HALF_OPEN at once
    assert breaker.state is BreakerState.HALF_OPEN
    return clock, breakers, grants, running


def test_probes_under_a_replaced_half_opens_permits_count_against_the_next() -> None:
    clock, breakers, grants, running = _read_back_over_a_half_open()
    new = grants[5:]
    assert len(running) + len(new) <= 3, (running, new)  # the code before: 3 + 1, then 3 + 3
    assert breakers.get("llm").permits_out(clock.now) == 3


def test_their_results_free_the_permits_for_the_next_half_open() -> None:
    clock, breakers, grants, running = _read_back_over_a_half_open()
    replaced = breakers.get("llm").generation - 2  # the HALF_OPEN the stored OPEN replaced
    for agent in sorted(running):
        clock.now += 0.05
        breakers.record(agent, pb.OutcomeSummary(service="llm", probe_successes=1, probe_generation=replaced))
    asking(breakers, WAITING)
    assert len(grants) == 6  # the lone probe of the new HALF_OPEN once they are back
    assert breakers.get("llm").permits_out(clock.now) == 1
