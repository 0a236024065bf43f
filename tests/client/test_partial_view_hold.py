"""Connected to a control plane that has not read its store (its snapshot is partial), an
agent holds the fleet state it had by the rules it holds it by with no link at all: a
HALF_OPEN for the probe TTL plus the policy's timeout from the link's loss, then its own
breaker decides; a state that control plane pushes itself is in force as any pushed state;
a whole snapshot ends it (injected clock)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState

from tests.client.test_half_open_link_lost import HOLD, breaker, connected_at, decided


def test_a_half_open_held_over_a_partial_snapshot_ends_with_the_hold() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    clock.now += 1.0
    view.apply_snapshot({}, [], partial=True)  # a restarted control plane, its store away
    view.connected = True
    assert decided(view, clock) == "refused"
    clock.now += HOLD - 1.01
    assert decided(view, clock) == "refused"
    clock.now += 0.02
    assert decided(view, clock) == "ordinary"  # the old code: refused while connected, for ever


def test_an_open_held_over_a_partial_snapshot_stays_until_its_wait_ends() -> None:
    view, clock = connected_at(BreakerState.OPEN, open_remaining=HOLD * 3)
    view.forget_fleet()
    view.apply_snapshot({}, [], partial=True)
    view.connected = True
    clock.now += HOLD * 2
    assert decided(view, clock) == "refused"


def test_a_state_the_partial_control_plane_pushes_is_in_force() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    view.apply_snapshot({}, [breaker(BreakerState.OPEN, 5, open_remaining=1.0)], partial=True)
    view.connected = True
    view.set_breaker(breaker(BreakerState.HALF_OPEN, 6))  # decided there, on its own counts
    clock.now += HOLD * 2
    assert decided(view, clock) == "refused"  # in force while connected: no permit yet


def test_a_whole_snapshot_after_a_partial_one_is_in_force_while_connected() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    view.apply_snapshot({}, [], partial=True)
    view.connected = True
    view.apply_snapshot({}, [breaker(BreakerState.HALF_OPEN, 4)])  # the store read
    clock.now += HOLD * 2
    assert decided(view, clock) == "refused"


def test_a_partial_snapshot_lists_no_closed_state() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.forget_fleet()
    view.apply_snapshot({}, [breaker(BreakerState.CLOSED, 0)], partial=True)
    view.connected = True
    assert decided(view, clock) == "refused"
    assert view.get("dep").fleet is not None and view.get("dep").fleet.state is BreakerState.HALF_OPEN
