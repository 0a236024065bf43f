"""An OPEN whose wait is over, pushed marked ``no_grants``, is held as a marked HALF_OPEN:
a follower replica learns states from etcd, and while etcd is away it may know the breaker
only as that OPEN while the leader holds it HALF_OPEN and can grant nothing (see
``server/grant_pause.py``). An OPEN with time left keeps its own wait (injected clock)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState

from tests.client.test_half_open_link_lost import HOLD, breaker, connected_at, decided, grant


def marked(state: BreakerState, generation: int = 4, open_remaining: float = 0.0) -> object:
    message = breaker(state, generation, open_remaining)
    message.no_grants = True
    return message


def test_an_open_whose_wait_is_over_marked_is_held_then_the_local_breaker_decides() -> None:
    view, clock = connected_at(BreakerState.OPEN, open_remaining=2.0)
    clock.now += 2.5
    assert decided(view, clock) == "refused"  # asks for a permit, as for a HALF_OPEN
    view.set_breaker(marked(BreakerState.OPEN))
    clock.now += HOLD - 0.01
    assert decided(view, clock) == "refused"
    clock.now += 0.02
    assert decided(view, clock) == "ordinary"  # the old code: refused while connected, for ever


def test_the_hold_counts_from_the_first_mark_through_the_half_open_learnt_later() -> None:
    view, clock = connected_at(BreakerState.OPEN)
    view.set_breaker(marked(BreakerState.OPEN))
    clock.now += HOLD - 1.0
    view.set_breaker(marked(BreakerState.HALF_OPEN, 5))  # etcd back: the leader's HALF_OPEN
    clock.now += 1.01
    assert decided(view, clock) == "ordinary"


def test_an_open_with_time_left_keeps_its_wait_and_a_mark_on_it_counts_for_nothing() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.set_breaker(marked(BreakerState.OPEN, 5, open_remaining=HOLD * 3))
    clock.now += HOLD * 2
    assert decided(view, clock) == "refused"  # its own wait
    clock.now += HOLD * 2
    assert decided(view, clock) == "refused"  # wait over: a probe is asked for, no hold ran
    view.set_breaker(marked(BreakerState.OPEN, 5))
    clock.now += HOLD + 0.01
    assert decided(view, clock) == "ordinary"  # held from this mark


def test_a_push_without_the_mark_brings_the_fleet_back_before_the_permit() -> None:
    view, clock = connected_at(BreakerState.OPEN)
    view.set_breaker(marked(BreakerState.OPEN))
    clock.now += HOLD * 3
    assert decided(view, clock) == "ordinary"
    view.set_breaker(breaker(BreakerState.HALF_OPEN, 5))  # the follower takes the mark back
    assert decided(view, clock) == "refused"
    view.grant(grant(5))
    assert decided(view, clock) == "fleet"
