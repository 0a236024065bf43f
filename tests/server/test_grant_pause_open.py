"""``GrantPause.check`` costs what may be marked: a leader does not look at its OPEN breakers
(it never marks one), a follower looks at an OPEN only once its wait is over (a heap keyed by
the end of the wait); what must be marked still is. Engine on an injected clock."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

from .test_grant_pause import Plane
from .test_probe_permits import POLICY, SERVICE, engine

MANY = 2000


def outage(fleet: FleetBreakers, count: int = MANY) -> list[str]:
    names = [f"down-{i:04d}" for i in range(count)]
    for name in names:
        fleet.record("a", pb.OutcomeSummary(service=name, failures=2, trailing_failures=2))
        fleet.stored(name, 10, fleet.run_of(name))
    return names


def test_a_leader_looks_at_none_of_its_open_breakers_and_marks_their_half_open_when_it_must() -> None:
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    names = outage(fleet)
    for _ in range(20):
        assert plane.pause.check() == []
    assert plane.pause.looked_at == 0
    clock.now += POLICY.wait_duration_secs
    fleet.tick()
    assert all(fleet.get(n).state is BreakerState.HALF_OPEN for n in names)
    for name in names:
        fleet.stored(name, 11, fleet.run_of(name))
    assert plane.pause.check() == []
    assert plane.pause.looked_at == MANY  # each HALF_OPEN, once
    plane.lease = False  # etcd away: no permit can be granted, every HALF_OPEN is marked
    assert plane.pause.check() == names
    assert all(fleet.to_proto(n).no_grants for n in names)
    plane.lease = True
    assert plane.pause.check() == names
    assert not any(fleet.to_proto(n).no_grants for n in names)


def test_a_follower_looks_at_an_open_once_its_wait_is_over_and_marks_it_then() -> None:
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    names = outage(fleet)
    clock.now += 1
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))  # a second later
    plane.leading, plane.cut = False, True  # a follower cut off from etcd: it marks by itself
    assert plane.pause.check() == []
    assert plane.pause.looked_at == 0
    clock.now += POLICY.wait_duration_secs - 1 - 0.01
    assert plane.pause.check() == [] and plane.pause.looked_at == 0
    clock.now += 0.01  # the outage's waits are over (a follower does not tick: still OPEN)
    assert plane.pause.check() == names
    assert plane.pause.looked_at == MANY
    assert all(fleet.to_proto(n).no_grants for n in names)
    assert not fleet.to_proto(SERVICE).no_grants
    clock.now += 1
    assert plane.pause.check() == [SERVICE]
    assert fleet.to_proto(SERVICE).no_grants


def test_an_open_pushed_again_with_a_new_wait_is_looked_at_when_that_wait_ends() -> None:
    fleet, clock, _ = engine()
    plane = Plane(fleet)
    plane.leading, plane.cut = False, True
    outage(fleet, 1)
    name = "down-0000"
    clock.now += POLICY.wait_duration_secs / 2
    fleet.force(name, BreakerState.CLOSED, "reset")
    fleet.record("a", pb.OutcomeSummary(service=name, failures=2, trailing_failures=2))  # OPEN again
    clock.now += POLICY.wait_duration_secs / 2
    assert plane.pause.check() == []  # the first wait's end: not this OPEN's
    assert not fleet.to_proto(name).no_grants
    clock.now += POLICY.wait_duration_secs / 2
    assert plane.pause.check() == [name]
