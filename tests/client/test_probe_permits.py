"""An agent's fleet probe permits: every one runs a probe or goes back (injected clock)."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.executor import Executor
from mission_control.client.probes import ASKING_SECS, USE_MARGIN_SECS
from mission_control.client.view import LocalView
from mission_control.resilience.v1 import control_plane_pb2 as pb

SERVICE = "dep"
TTL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def breaker(state: BreakerState, generation: int) -> pb.Breaker:
    return pb.Breaker(name=SERVICE, state=int(state), generation=generation)


def grant(generation: int) -> pb.ProbeGrant:
    message = pb.ProbeGrant(service=SERVICE, permits=1, generation=generation)
    message.ttl.FromNanoseconds(int(TTL * 1e9))
    return message


def view_at(state: BreakerState, generation: int) -> tuple[LocalView, Clock]:
    clock = Clock()
    view = LocalView(clock=clock)
    view.connected = True
    view.set_breaker(breaker(state, generation))
    return view, clock


def given_back(view: LocalView, clock: Clock) -> tuple[int, int]:
    tally = view.get(SERVICE).drain(clock())
    return (tally.probes_released, tally.probe_generation) if tally is not None else (0, 0)


def test_a_grant_that_arrives_before_the_state_push_is_kept_and_used() -> None:
    view, clock = view_at(BreakerState.OPEN, 7)
    view.grant(grant(8))  # relayed by a follower ahead of the HALF_OPEN push
    assert given_back(view, clock) == (0, 0)
    view.set_breaker(breaker(BreakerState.HALF_OPEN, 8))
    assert view.get(SERVICE).take_permit(clock())


def test_a_grant_for_an_earlier_half_open_goes_back() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 9)
    view.grant(grant(8))
    assert given_back(view, clock) == (1, 8)
    assert not view.get(SERVICE).take_permit(clock())


def test_permits_of_a_half_open_that_ended_go_back() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    view.grant(grant(3))
    view.set_breaker(breaker(BreakerState.OPEN, 4))
    assert given_back(view, clock) == (1, 3)


def test_an_unused_permit_goes_back_once_the_agent_stops_calling() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    view.grant(grant(3))
    clock.now += ASKING_SECS / 2
    assert given_back(view, clock) == (0, 0)  # it may still call
    clock.now += ASKING_SECS
    assert given_back(view, clock) == (1, 3)


def test_a_permit_never_outlives_its_ttl() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 3)
    state = view.get(SERVICE)
    view.grant(grant(3))
    while clock.now < 50.0 + TTL:  # the agent keeps wanting to call, but cannot use it yet
        with state.lock:
            state.permits.want(clock.now)
        clock.now += 0.25
    assert not state.take_permit(clock())
    assert given_back(view, clock) == (1, 3)


async def test_a_cancelled_async_probe_gives_its_permit_back() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 5)
    view.grant(grant(5))
    executor = Executor(view)
    started = asyncio.Event()

    async def hangs(_: float) -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(executor.run_async(SERVICE, hangs))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert given_back(view, clock) == (1, 5)


def test_a_closing_agent_gives_its_unused_permits_back() -> None:
    view, clock = view_at(BreakerState.HALF_OPEN, 4)
    view.grant(grant(4))
    view.give_back_permits()
    assert given_back(view, clock) == (1, 4)


class Nudged:
    """The connection's hot-path side: counts the nudges (outcomes sent at once)."""

    def __init__(self) -> None:
        self.nudges = 0

    def nudge(self) -> None:
        self.nudges += 1

    def ask_probe(self, service: str) -> None:
        pass


def test_a_fleet_probe_that_succeeded_is_reported_at_once_not_at_the_next_interval() -> None:
    view, _clock = view_at(BreakerState.HALF_OPEN, 6)
    view.grant(grant(6))
    connection = Nudged()
    executor = Executor(view, connection)  # type: ignore[arg-type]
    assert executor.run(SERVICE, lambda _left: "ok") == "ok"
    assert view.get(SERVICE).tally.probe_successes == 1
    assert connection.nudges == 1  # the HALF_OPEN waits for this result
    view.set_breaker(breaker(BreakerState.CLOSED, 7))
    executor.run(SERVICE, lambda _left: "ok")
    assert connection.nudges == 1  # an ordinary success waits for the interval


def test_a_permit_is_used_no_later_than_its_ttl_less_a_margin() -> None:
    """The granter's hold began before the grant arrived: a probe begun by the end of the
    TTL here could end past that hold, once the permit may be granted again."""
    for after, used in ((TTL - USE_MARGIN_SECS - 0.01, True), (TTL - USE_MARGIN_SECS + 0.01, False)):
        view, clock = view_at(BreakerState.HALF_OPEN, 3)
        view.grant(grant(3))
        clock.now += after
        assert bool(view.get(SERVICE).take_permit(clock())) is used, after
