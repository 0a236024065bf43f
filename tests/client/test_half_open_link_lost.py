"""A fleet HALF_OPEN stays in force after the agent's link to the control plane breaks
(fail static): no ordinary call and no probe of the agent's own breaker until the link has
been down for the probe TTL plus the policy's timeout; then the local breaker decides. A
snapshot on reconnect replaces it (injected clock)."""

from __future__ import annotations

from mission_control.client.admission import Admission, Admitted
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

SERVICE = "dep"
TIMEOUT = 6.0
TTL = 5.0
HOLD = TTL + TIMEOUT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(state: BreakerState, generation: int, open_remaining: float = 0.0) -> pb.Breaker:
    message = pb.Breaker(name=SERVICE, state=int(state), generation=generation)
    message.open_remaining.FromNanoseconds(int(open_remaining * 1e9))
    return message


def grant(generation: int, ttl: float = TTL) -> pb.ProbeGrant:
    message = pb.ProbeGrant(service=SERVICE, permits=1, generation=generation)
    message.ttl.FromNanoseconds(int(ttl * 1e9))
    return message


def connected_at(
    state: BreakerState, generation: int = 4, open_remaining: float = 0.0
) -> tuple[LocalView, Clock]:
    clock = Clock()
    view = LocalView({SERVICE: ServicePolicy(SERVICE, timeout_secs=TIMEOUT)}, clock=clock)
    view.apply_snapshot({}, [breaker(state, generation, open_remaining)])
    view.connected = True
    return view, clock


def decided(view: LocalView, clock: Clock) -> str:
    """What the agent's next call is admitted as: "fleet", "local", "ordinary" or "refused"."""
    verdict = Admission(view, None).breaker(view.get(SERVICE), clock())
    if isinstance(verdict, Admitted):
        return verdict.probe or "ordinary"
    return "refused"


def test_a_half_open_stays_in_force_for_the_probe_ttl_and_timeout_after_the_link_drops() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    assert view.get(SERVICE).local.state is BreakerState.CLOSED  # it saw no failure itself
    view.forget_fleet()
    clock.now += HOLD - 0.01
    assert decided(view, clock) == "refused"  # the old code: "ordinary" at once
    clock.now += 0.02
    assert decided(view, clock) == "ordinary"  # its own breaker decides now


def test_a_permit_held_when_the_link_drops_runs_no_probe() -> None:
    """The control plane hands the permits of an ended stream on at once: a probe under
    one now would be one more than the fleet allows."""
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(grant(4))
    view.forget_fleet()
    assert decided(view, clock) == "refused"


def test_reconnect_attempts_that_fail_do_not_lengthen_the_hold() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    clock.now += HOLD - 1.0
    view.forget_fleet()  # a replica that did not answer
    clock.now += 1.01
    assert decided(view, clock) == "ordinary"


def test_the_hold_follows_the_ttl_the_control_plane_grants() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(grant(4, ttl=1.0))
    assert decided(view, clock) == "fleet"
    view.forget_fleet()
    clock.now += 1.0 + TIMEOUT - 0.01
    assert decided(view, clock) == "refused"
    clock.now += 0.02
    assert decided(view, clock) == "ordinary"


def test_an_open_whose_wait_ends_while_the_link_is_down_is_held_as_half_open() -> None:
    view, clock = connected_at(BreakerState.OPEN, open_remaining=2.0)
    view.forget_fleet()
    clock.now += 2.5  # the fleet is HALF_OPEN now, and this agent holds no permit
    assert decided(view, clock) == "refused"
    clock.now += HOLD
    assert decided(view, clock) == "ordinary"


def test_a_snapshot_on_reconnect_replaces_the_held_half_open() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    clock.now += 1.0
    view.apply_snapshot({}, [breaker(BreakerState.CLOSED, 5)])
    view.connected = True
    assert decided(view, clock) == "ordinary"
    view.forget_fleet()
    view.apply_snapshot({}, [breaker(BreakerState.HALF_OPEN, 6)])
    view.connected = True
    assert decided(view, clock) == "refused"
    view.grant(grant(6))
    assert decided(view, clock) == "fleet"


def test_the_view_holds_the_half_open_in_force_until_the_hold_ends() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    assert view.fleet_in_force(view.get(SERVICE), clock()) is not None
    clock.now += HOLD
    assert view.fleet_in_force(view.get(SERVICE), clock()) is None


def test_a_granted_ttl_of_days_holds_no_longer_than_a_minute() -> None:
    """A hostile or broken peer's TTL bounds nothing but its own permit."""
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(grant(4, ttl=86_400.0 * 30))
    view.forget_fleet()
    clock.now += 60.0 + TIMEOUT - 0.01
    assert decided(view, clock) == "refused"
    clock.now += 0.02
    assert decided(view, clock) == "ordinary"
