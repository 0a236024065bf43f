"""HALF_OPEN probe permits for the fleet, decided by the engine on an injected clock (I3)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import default_policy
from mission_control.client.probes import ASKING_SECS
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

SERVICE = "dep"
POLICY = default_policy(
    SERVICE, failure_threshold=2, success_threshold=2, wait_duration_secs=10, timeout_secs=3
)
TTL = 5.0
HOLD = TTL + POLICY.timeout_secs  # the engine holds an unused permit this long


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def engine() -> tuple[FleetBreakers, Clock, list[tuple[str, int]]]:
    clock = Clock()
    fleet = FleetBreakers(lambda _: POLICY, clock=clock, wall=lambda: 1e9, probe_ttl=TTL)
    grants: list[tuple[str, int]] = []
    fleet.grant_listeners.append(lambda agent, grant: grants.append((agent, grant.generation)))
    return fleet, clock, grants


def half_open(fleet: FleetBreakers, clock: Clock) -> None:
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    clock.now += POLICY.wait_duration_secs
    fleet.tick()
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN


def summary(generation: int, **counts: int) -> pb.OutcomeSummary:
    return pb.OutcomeSummary(service=SERVICE, probe_generation=generation, **counts)


def first_probe_succeeded(fleet: FleetBreakers, clock: Clock) -> int:
    """The HALF_OPEN's single first probe, made and succeeded (by an agent that then stops
    asking): the rest may go together."""
    generation = fleet.get(SERVICE).generation
    assert fleet.request_probe("first", SERVICE) is not None
    clock.now += ASKING_SECS + 0.01
    fleet.record("first", summary(generation, probe_successes=1))
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN
    return generation


def test_one_probe_goes_first_and_the_rest_only_once_it_succeeded() -> None:
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    assert fleet.request_probe("a", SERVICE) is not None
    assert fleet.request_probe("b", SERVICE) is None  # a service still down costs one call
    generation = fleet.get(SERVICE).generation
    grants.clear()
    fleet.record("a", summary(generation, probe_successes=1))
    assert ("b", generation) in grants  # b, still asking, has its permit at once
    assert fleet.request_probe("c", SERVICE) is None  # success_threshold (2) out: b's and a's
    assert fleet.get(SERVICE).permits_out(clock.now) == POLICY.success_threshold


def test_an_expired_permit_goes_to_an_agent_still_asking() -> None:
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    first_probe_succeeded(fleet, clock)
    granted = clock.now
    assert fleet.request_probe("a", SERVICE) is not None
    assert fleet.request_probe("b", SERVICE) is not None
    assert fleet.request_probe("c", SERVICE) is None  # success_threshold (2) are out
    # a and b vanish without a word; c keeps asking
    while clock.now < 200.0 and not any(agent == "c" for agent, _ in grants):
        clock.now += 0.1
        fleet.request_probe("c", SERVICE)
        fleet.tick()
    granted_at = clock.now
    assert any(agent == "c" for agent, _ in grants)
    assert granted_at <= granted + HOLD + 0.2
    assert fleet.get(SERVICE).permits_out(clock.now) <= POLICY.success_threshold


def test_the_re_grant_runs_from_the_tick_alone() -> None:
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    fleet.request_probe("a", SERVICE)
    fleet.request_probe("b", SERVICE)
    clock.now += HOLD - ASKING_SECS / 2
    assert fleet.request_probe("c", SERVICE) is None  # both permits are still out
    grants.clear()
    clock.now += ASKING_SECS / 4
    fleet.tick()
    assert grants == []
    # c is still asking when a's and b's permits lapse: nothing but the tick notices
    clock.now += ASKING_SECS / 4 + 0.01
    fleet.tick()
    assert [agent for agent, _ in grants] == ["c"]


def test_permits_go_only_to_agents_asking_now() -> None:
    fleet, clock, grants = engine()
    fleet.record("gone", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    fleet.record("gone", pb.OutcomeSummary(service=SERVICE, rejected=5))  # then stops calling
    clock.now += POLICY.wait_duration_secs - ASKING_SECS / 2
    fleet.record("busy", pb.OutcomeSummary(service=SERVICE, rejected=5))
    clock.now += ASKING_SECS / 2
    fleet.tick()  # HALF_OPEN: the permits go out at once
    assert [agent for agent, _ in grants] == ["busy"]


def test_a_late_give_back_does_not_free_a_permit_of_a_later_half_open() -> None:
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    first = first_probe_succeeded(fleet, clock)
    fleet.request_probe("a", SERVICE)
    fleet.request_probe("b", SERVICE)
    fleet.record("b", summary(first, probe_failures=1))  # b's probe failed: OPEN again
    clock.now += fleet.get(SERVICE).open_remaining(clock.now)  # a longer wait than the first
    fleet.tick()
    second = fleet.get(SERVICE).generation
    assert fleet.request_probe("a", SERVICE) is not None and second > first
    # a's give-back of its first permit arrives only now: it frees nothing
    grants.clear()
    fleet.record("a", summary(first, probes_released=1))
    assert fleet.get(SERVICE).permits_of("a") == 1 and grants == []
    # ...and a success of the earlier HALF_OPEN does not count for this one
    fleet.record("a", summary(first, probe_successes=2))
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN
    grants.clear()
    fleet.record("a", summary(second, probes_released=1))
    assert grants == [("a", second)]  # freed, and a (still asking) has it again


def test_a_give_back_frees_the_permit_for_the_next_asker_at_once() -> None:
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    generation = first_probe_succeeded(fleet, clock)
    fleet.request_probe("a", SERVICE)
    fleet.request_probe("b", SERVICE)
    fleet.request_probe("c", SERVICE)
    grants.clear()
    clock.now += 0.1
    fleet.record("a", summary(generation, probes_released=1))
    assert grants == [("c", generation)]


def test_probes_close_the_breaker_and_never_exceed_the_threshold() -> None:
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    generation = first_probe_succeeded(fleet, clock)
    grants.clear()
    agents = [f"agent-{i}" for i in range(6)]
    for agent in agents:
        fleet.request_probe(agent, SERVICE)
        assert fleet.get(SERVICE).permits_out(clock.now) <= POLICY.success_threshold
    holders = [agent for agent, _ in grants]
    assert len(holders) == POLICY.success_threshold
    for agent in holders:
        fleet.record(agent, summary(generation, probe_successes=1))
    assert fleet.get(SERVICE).state is BreakerState.CLOSED


def test_the_same_half_open_stored_again_keeps_its_permits_out() -> None:
    """The watch reports the HALF_OPEN's own write (or a reload reads it) at a newer
    revision: the permit granted is still out, and no second one goes while it is."""
    fleet, clock, _ = engine()
    half_open(fleet, clock)
    assert fleet.request_probe("a", SERVICE) is not None
    fleet.adopt(SERVICE, fleet.to_record(SERVICE), revision=fleet.revisions.get(SERVICE, 0) + 5)
    assert fleet.request_probe("b", SERVICE) is None
    assert fleet.get(SERVICE).permits_out(clock.now) == 1


def test_another_half_open_stored_keeps_the_permits_of_the_one_held_counted() -> None:
    """The stored HALF_OPEN replaces the one held, not the probe under its permit, which may
    still run: it counts against the new one until its result (or its hold) ends it."""
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    held = fleet.get(SERVICE).generation
    assert fleet.request_probe("a", SERVICE) is not None
    other = fleet.draft(SERVICE)
    other.generation += 1
    fleet.adopt(SERVICE, fleet.record_of(other), revision=fleet.revisions.get(SERVICE, 0) + 5)
    assert fleet.get(SERVICE).permits_out(clock.now) == 1
    assert fleet.request_probe("b", SERVICE) is None  # the code before: a second probe
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, probe_successes=1, probe_generation=held))
    assert grants[-1] == ("b", held + 1)  # its place goes to the agent asking
    assert fleet.get(SERVICE).permits_out(clock.now) == 1


def test_a_half_open_after_a_lost_compare_and_swap_has_a_generation_of_its_own() -> None:
    """The HALF_OPEN decided in memory loses its write to the OPEN the store still holds;
    the next HALF_OPEN must not reuse its generation: the permit granted under the first
    would count for the second, and two probes would go where one may."""
    fleet, clock, grants = engine()
    half_open(fleet, clock)
    superseded = fleet.get(SERVICE).generation
    assert fleet.request_probe("a", SERVICE) is not None
    stored = fleet.draft(SERVICE)
    stored.state, stored.generation = BreakerState.OPEN, superseded - 1
    stored.opened_at = stored.changed_at = clock.now - POLICY.wait_duration_secs
    fleet.adopt(SERVICE, fleet.record_of(stored), revision=3)
    assert fleet.get(SERVICE).state is BreakerState.OPEN
    fleet.tick()
    breaker = fleet.get(SERVICE)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.generation > superseded
    # the probe under the superseded HALF_OPEN's permit may still run: it holds the one place
    assert grants[-1] == ("a", superseded) and breaker.permits_out(clock.now) == 1
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, probe_successes=1, probe_generation=superseded))
    assert breaker.state is BreakerState.HALF_OPEN  # a result of the superseded one counts not
    assert grants[-1] == ("a", breaker.generation)  # then a permit of the new one
    assert breaker.permits_out(clock.now) == 1
