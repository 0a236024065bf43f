"""A HALF_OPEN the control plane says it can grant no permit for (``Breaker.no_grants``) is
held by an agent as after a lost link, though it is connected: refused for the probe TTL
plus the policy's timeout from the first push that said so, then its own breaker decides,
until a push no longer says so (injected clock)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState

from tests.client.test_half_open_link_lost import HOLD, breaker, connected_at, decided, grant


def marked(generation: int = 4) -> object:
    message = breaker(BreakerState.HALF_OPEN, generation)
    message.no_grants = True
    return message


def test_a_half_open_nobody_can_grant_for_is_held_then_the_local_breaker_decides() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    clock.now += 1.0
    view.set_breaker(marked())
    clock.now += HOLD - 0.01
    assert decided(view, clock) == "refused"
    clock.now += 0.02
    assert decided(view, clock) == "ordinary"  # the old code: refused while connected, for ever


def test_the_hold_counts_from_the_first_mark_not_from_each_push() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.set_breaker(marked())
    clock.now += HOLD - 1.0
    view.set_breaker(marked())  # pushed again (a snapshot, a restatement)
    view.set_breaker(marked(5))  # a later HALF_OPEN decided from memory: still no grant
    clock.now += 1.01
    assert decided(view, clock) == "ordinary"


def test_a_push_without_the_mark_brings_the_fleet_half_open_back() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.set_breaker(marked())
    clock.now += HOLD * 3
    assert decided(view, clock) == "ordinary"
    view.set_breaker(breaker(BreakerState.HALF_OPEN, 4))  # it can grant again
    assert decided(view, clock) == "refused"  # asks for a permit, as before
    view.grant(grant(4))
    assert decided(view, clock) == "fleet"
    view.set_breaker(marked())  # and a later mark holds from then
    clock.now += HOLD - 0.01
    assert decided(view, clock) == "refused"


def test_a_link_lost_while_marked_holds_from_the_mark() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.set_breaker(marked())
    clock.now += HOLD - 1.0
    view.forget_fleet()  # no permit came since the mark
    clock.now += 1.01
    assert decided(view, clock) == "ordinary"


def test_an_open_is_not_held_by_a_mark_it_cannot_carry() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.set_breaker(marked())
    view.set_breaker(breaker(BreakerState.OPEN, 5, open_remaining=HOLD * 3))
    clock.now += HOLD * 2
    assert decided(view, clock) == "refused"  # the OPEN's wait is its own
