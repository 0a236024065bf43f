"""The end of a probe permit's hold, said with the grant and kept by a new leader (I3):

* a grant carries ``hold_until``, the wall-clock end of the very hold its granter keeps
  (the grant's time plus the probe TTL plus the policy's timeout);
* a follower passes a grant on with only the TTL left of it, ``hold_until`` unchanged;
* a new leader's wait for an earlier leader's permits counts a timeout lowered lately: a
  permit granted under the old one may be held that long (before, the wait counted the
  timeout in force at the takeover, and the new leader granted beside a probe still
  running under the old timeout).

Injected clocks."""

from __future__ import annotations

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.relay_permits import passed_on

SERVICE = "dep"
TTL = 5.0
WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def engine(timeouts: dict[str, float]) -> tuple[FleetBreakers, Clock]:
    clock = Clock()

    def policy(_: str) -> ServicePolicy:
        return default_policy(
            SERVICE,
            failure_threshold=2,
            success_threshold=1,
            wait_duration_secs=10,
            timeout_secs=timeouts["t"],
        )

    fleet = FleetBreakers(policy, clock=clock, wall=lambda: WALL + clock.now, probe_ttl=TTL)
    return fleet, clock


def half_open(fleet: FleetBreakers, clock: Clock) -> None:
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    clock.now += 10
    fleet.tick()
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN


def test_a_grant_says_when_its_granters_hold_ends() -> None:
    fleet, clock = engine({"t": 3.0})
    half_open(fleet, clock)
    grant = fleet.request_probe("a", SERVICE)
    assert grant is not None and grant.HasField("hold_until")
    assert grant.hold_until.ToNanoseconds() / 1e9 == pytest.approx(WALL + clock.now + TTL + 3.0)


def granted(ttl: float, hold_until: float | None) -> pb.ProbeGrant:
    grant = pb.ProbeGrant(service=SERVICE, permits=1, generation=2, number=7, series=1)
    grant.ttl.FromNanoseconds(int(ttl * 1e9))
    if hold_until is not None:
        grant.hold_until.FromNanoseconds(int(hold_until * 1e9))
    return grant


def test_a_relay_passes_on_only_the_ttl_left() -> None:
    made = WALL + 10.0
    hold_until = made + TTL + 3.0
    late = passed_on(granted(TTL, hold_until), made + 3.5, 3.0)  # stalled 3.5 s on the way
    assert late.ttl.ToNanoseconds() / 1e9 == pytest.approx(TTL - 3.5)
    assert late.hold_until == granted(TTL, hold_until).hold_until and late.number == 7
    spent = passed_on(granted(TTL, hold_until), made + 6.0, 3.0)
    assert spent.ttl.ToNanoseconds() == 0
    fresh = granted(TTL, hold_until)
    assert passed_on(fresh, made, 3.0) is fresh  # the whole TTL left: as it came
    older = granted(TTL, None)  # an older granter: passed on as it came
    assert passed_on(older, made + 6.0, 3.0) is older


def test_a_relay_reads_the_hold_on_its_own_clock() -> None:
    """The leader's clock is 10 s behind this replica's (measured: shift 10): the hold goes
    on read on this clock, and the TTL left is counted from it."""
    made = WALL + 10.0  # on the leader's clock
    hold_until = made + TTL + 3.0
    on_time = passed_on(granted(TTL, hold_until), made + 10.0, 3.0, shift=10.0)
    assert on_time.hold_until.ToNanoseconds() / 1e9 == pytest.approx(hold_until + 10.0)
    assert on_time.ttl.ToNanoseconds() / 1e9 == pytest.approx(TTL) and on_time.number == 7
    late = passed_on(granted(TTL, hold_until), made + 10.0 + 3.5, 3.0, shift=10.0)
    assert late.ttl.ToNanoseconds() / 1e9 == pytest.approx(TTL - 3.5)
    # not measured: on this clock the hold reads as over, as before
    assert passed_on(granted(TTL, hold_until), made + 10.0, 3.0).ttl.ToNanoseconds() == 0


def test_a_new_leaders_wait_counts_a_timeout_lowered_just_before() -> None:
    """The earlier leader granted under a 20-s timeout; the operator lowered it to 3 s; then
    this replica took over: an earlier permit may be held for 5 + 20 s from its grant."""
    timeouts = {"t": 20.0}
    fleet, clock = engine(timeouts)
    half_open(fleet, clock)  # (as a follower: it read the breaker, granted nothing)
    timeouts["t"] = 3.0
    fleet.policy_changed(SERVICE)
    clock.now += 1.0
    fleet.took_over()
    took_over = clock.now
    clock.now = took_over + TTL + 3.0 + 0.1
    assert fleet.grants_blocked(SERVICE)  # old: granted here, beside a 20-s probe
    assert fleet.request_probe("b", SERVICE) is None
    clock.now = took_over + TTL + 20.0 + 0.01
    assert not fleet.grants_blocked(SERVICE)
    assert fleet.request_probe("b", SERVICE) is not None


def test_a_timeout_lowered_long_ago_no_longer_counts() -> None:
    timeouts = {"t": 20.0}
    fleet, clock = engine(timeouts)
    half_open(fleet, clock)
    timeouts["t"] = 3.0
    fleet.policy_changed(SERVICE)
    clock.now += TTL + 20.0 + 0.01  # no permit granted under 20 s may be held any more
    fleet.took_over()
    took_over = clock.now
    clock.now = took_over + TTL + 3.0 + 0.01
    assert not fleet.grants_blocked(SERVICE)


def test_a_raised_timeout_counts_at_once() -> None:
    timeouts = {"t": 3.0}
    fleet, clock = engine(timeouts)
    half_open(fleet, clock)
    timeouts["t"] = 20.0
    fleet.policy_changed(SERVICE)
    fleet.took_over()
    took_over = clock.now
    clock.now = took_over + TTL + 3.0 + 0.1
    assert fleet.grants_blocked(SERVICE)  # as before: the wait counts the timeout in force
