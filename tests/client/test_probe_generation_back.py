"""A probe counts for the HALF_OPEN in force even when its generation is below one the
agent counted before (injected clock).

Generations are not ordered across a leader change: a leader cut off from etcd decided a
HALF_OPEN from memory (generation 11) that its successor superseded with the stored one
(generation 9). An agent that probed under the first kept counting for 11 and dropped the
results of its probes under 9: the follower that relayed it the permit never heard back,
and kept the fleet's only permit until its hold ended (simulated schedule 1078 at version
2, ``--active 40``: an agent asking 7.5 s without a permit).
"""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.executor import Executor

from tests.client.test_probe_permits import SERVICE, Nudged, breaker, grant, view_at


def test_a_probe_under_a_generation_below_one_counted_before_is_reported() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 11)  # decided from memory, never stored
    executor = Executor(view, Nudged())  # type: ignore[arg-type]
    view.grant(grant(11))
    assert executor.run(SERVICE, lambda _left: "ok") == "ok"
    view.get(SERVICE).drain(clock())  # reported (and ignored: that HALF_OPEN is over)
    view.set_breaker(breaker(BreakerState.HALF_OPEN, 9))  # the stored one stands
    view.grant(grant(9))
    assert executor.run(SERVICE, lambda _left: "ok") == "ok"
    tally = view.get(SERVICE).drain(clock())
    assert tally is not None
    assert (tally.probe_successes, tally.probe_generation) == (1, 9)


def test_a_probe_of_a_breaker_started_over_while_none_was_held_is_reported() -> None:
    """The breaker is gone (the store lost it, no replica held it): the agent's new stream
    lists none, and it starts over at 0 and half-opens at 2, below the 6 counted before
    (simulated schedule 175, ``--active 80``)."""
    view, clock = view_at(BreakerState.HALF_OPEN, 6)
    executor = Executor(view, Nudged())  # type: ignore[arg-type]
    view.grant(grant(6))
    assert executor.run(SERVICE, lambda _left: "ok") == "ok"
    view.get(SERVICE).drain(clock())
    view.apply_snapshot({}, [])  # a new stream: the control plane holds no such breaker
    for state, generation in ((BreakerState.CLOSED, 0), (BreakerState.OPEN, 1), (BreakerState.HALF_OPEN, 2)):
        view.set_breaker(breaker(state, generation))
    view.grant(grant(2))
    assert executor.run(SERVICE, lambda _left: "ok") == "ok"
    tally = view.get(SERVICE).drain(clock())
    assert tally is not None
    assert (tally.probe_successes, tally.probe_generation) == (1, 2)
