"""I3's hold check and a policy timeout lowered while a permit is held.

A leader holds a probe permit for the probe TTL plus the policy's timeout *at the grant*
(``server/lowered_timeouts.py``): an agent may run its probe that long. The operator may
lower the timeout meanwhile; the hold rightly lasts. The checker (``ProbeWatch``) must take
the timeout a permit was granted under for its longest hold, not the policy of now, yet
still catch a permit held past that.

Scripted on the real engine (``FleetBreakers``, an injected clock) and the real checker, so
the case is met for certain: a 10 s timeout at the grant, lowered to 5 s, the checker asked
while the permit is held past TTL + 5 s. (Before, schedule 21 at --active 40 --skew met it;
the schedules moved since and it no longer does.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.server.engine import PROBE_TTL_SECS, FleetBreakers

from .fleet_checks import ProbeWatch

SERVICE = "svc-b"
HIGH, LOW = 10.0, 5.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Recorder:
    found: list[str] = field(default_factory=list)

    def violation(self, kind: str, key: tuple[str, str], text: str) -> None:
        self.found.append(f"{kind}: {text}")


@dataclass
class _World:
    """What ProbeWatch reads of the simulated world for its hold check."""

    clock: _Clock
    recorder: _Recorder = field(default_factory=_Recorder)

    @property
    def now(self) -> float:
        return self.clock.now


@dataclass
class _Plane:
    breakers: FleetBreakers


@dataclass
class _Replica:
    instance: str
    plane: _Plane


def _policy(timeout: float) -> ServicePolicy:
    return ServicePolicy(
        service=SERVICE,
        failure_threshold=3,
        success_threshold=1,
        wait_duration_secs=1.0,
        timeout_secs=timeout,
    )


def _granted_then_lowered(*, watched: bool) -> tuple[ProbeWatch, _Replica, _Clock, float]:
    """A leader grants ``agent-1`` a permit of svc-b under a 10 s timeout (the checker told
    of the grant unless not ``watched``), then the operator lowers the timeout to 5 s.
    Returns the checker, the replica, the clock and the permit's hold end."""
    clock = _Clock()
    policies = {SERVICE: _policy(HIGH)}
    breakers = FleetBreakers(lambda name: policies[name], clock=clock, wall=lambda: 1.7e9 + clock.now)
    replica = _Replica("cp0.1", _Plane(breakers))
    watch = ProbeWatch(_World(clock))  # type: ignore[arg-type]
    if watched:  # as tests/sim_fleet/world.py hooks it on every replica
        breakers.grant_listeners.append(lambda _, grant: watch.granting(replica, grant.service))  # type: ignore[arg-type]

    breakers.get(SERVICE).record(clock.now, 0, 3)  # three failures: OPEN
    assert breakers.get(SERVICE).state is BreakerState.OPEN
    clock.now += 1.5
    breakers.tick()
    assert breakers.get(SERVICE).state is BreakerState.HALF_OPEN
    assert breakers.request_probe("agent-1", SERVICE) is not None
    (expiry,) = breakers.get(SERVICE)._permits["agent-1"]
    assert expiry == clock.now + PROBE_TTL_SECS + HIGH

    clock.now += 0.5
    policies[SERVICE] = _policy(LOW)
    breakers.policy_changed(SERVICE)
    assert breakers.get(SERVICE).policy.timeout_secs == LOW
    return watch, replica, clock, float(expiry)


def _check_at(watch: ProbeWatch, replica: _Replica, now: float) -> list[str]:
    watch.world.clock.now = now  # type: ignore[attr-defined]
    watch._holds_expire(replica, now)  # type: ignore[arg-type]
    return watch.world.recorder.found  # type: ignore[attr-defined, no-any-return]


def test_a_permit_held_under_a_timeout_lowered_since_is_held_that_long() -> None:
    watch, replica, clock, expiry = _granted_then_lowered(watched=True)
    now = clock.now + 0.1
    # the case: the hold reaches past TTL + the timeout of now, and the engine keeps it
    assert expiry > now + PROBE_TTL_SECS + LOW + 1.0
    assert replica.plane.breakers.get(SERVICE).permits_of("agent-1") == 1
    assert _check_at(watch, replica, now) == []
    # ... and all along, until the permit lapses (the engine lets it go then)
    while now < expiry - 0.05:
        now += 0.25
        assert _check_at(watch, replica, now) == []
    clock.now = expiry + 0.1
    replica.plane.breakers.tick()
    assert replica.plane.breakers.get(SERVICE).permits_of("agent-1") == 0


def test_the_check_still_catches_a_hold_past_the_timeout_at_the_grant() -> None:
    """Counted with the grant's 10 s, a hold beyond TTL + 10 s is a violation."""
    watch, replica, clock, _ = _granted_then_lowered(watched=True)
    breaker = replica.plane.breakers.get(SERVICE)
    breaker._permits["agent-1"] = [type(p)(p + 3.0, p.number) for p in breaker._permits["agent-1"]]
    found = _check_at(watch, replica, clock.now + 0.1)
    assert len(found) == 1 and f"the longest hold: {PROBE_TTL_SECS + HIGH:g}s" in found[0], found


def test_without_the_grant_time_timeout_the_right_hold_is_a_violation() -> None:
    """The checker not told of the grant counts the timeout of now (5 s): the permit's
    right hold then reads as one too long. What the first test guards against."""
    watch, replica, clock, _ = _granted_then_lowered(watched=False)
    found = _check_at(watch, replica, clock.now + 0.1)
    assert len(found) == 1 and f"the longest hold: {PROBE_TTL_SECS + LOW:g}s" in found[0], found
