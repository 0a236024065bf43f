"""A mass outage (thousands of breakers OPEN) does not make every tick walk them all: a tick
looks at the breakers whose wait has ended, each once, and a burst of waits that end together
is worked in slices of the clock, the rest left for the next call. Injected clock; what is
counted is the breakers a tick looks at (``CircuitBreaker.tick`` calls and the engine's own
count), never how long it takes."""

from __future__ import annotations

import pytest
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.timed_breakers import SWEEP_SHARE

GROUPS = 30
PER_GROUP = 100
WAIT = 5.0
TICK = 0.02


class Clock:
    """Virtual time; ``step``: how far each reading moves it (work that takes time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def outage(clock: Clock, groups: int, gap: float) -> FleetBreakers:
    policies: dict[str, ServicePolicy] = {}

    def policy_of(service: str) -> ServicePolicy:
        return policies.setdefault(
            service, ServicePolicy(service, failure_threshold=2, wait_duration_secs=WAIT)
        )

    breakers = FleetBreakers(policy_of, clock=clock)
    for group in range(groups):
        for i in range(PER_GROUP):
            summary = pb.OutcomeSummary(service=f"s-{group:02d}-{i:03d}", failures=2, trailing_failures=2)
            breakers.record("agent", summary)
        clock.now += gap
    return breakers


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    tick = CircuitBreaker.tick

    def counting(self: CircuitBreaker, now: float) -> object:
        calls.append(self.name)
        return tick(self, now)

    monkeypatch.setattr(CircuitBreaker, "tick", counting)
    return calls


def test_a_tick_looks_only_at_the_open_breakers_whose_wait_ended(counted: list[str]) -> None:
    clock = Clock()
    breakers = outage(clock, GROUPS, 0.1)  # 3,000 OPEN, a group's wait ending every 0.1 s
    assert sum(b.state is BreakerState.OPEN for b in breakers._breakers.values()) == GROUPS * PER_GROUP
    opened = clock.now - GROUPS * 0.1
    end = opened + (GROUPS - 1) * 0.1 + WAIT + 2 * TICK
    idle_ticks = 0
    while clock.now < end:
        before, visited = len(counted), breakers.ticks_visited
        clock.now += TICK
        moved = breakers.tick()
        took = counted[before:]
        # each breaker the tick looked at was one whose wait had ended, and it went HALF_OPEN
        assert sorted(took) == sorted(move.name for move in moved)
        ended = {
            n
            for n, b in breakers._breakers.items()
            if b.opened_at is not None and b.opened_at + WAIT <= clock.now
        }
        assert set(took) <= ended
        # the tick's whole work: those, and its share of the safety sweep
        assert breakers.ticks_visited - visited <= len(took) + SWEEP_SHARE * len(breakers._breakers) + 1
        if not took:
            idle_ticks += 1
    assert idle_ticks > (WAIT - 1) / TICK  # most ticks of the wait looked at no breaker
    assert sorted(counted) == sorted(breakers._breakers)  # each looked at once
    assert all(b.state is BreakerState.HALF_OPEN for b in breakers._breakers.values())
    assert not breakers.tick_due()


def test_each_breaker_goes_half_open_at_the_first_tick_after_its_own_wait(counted: list[str]) -> None:
    clock = Clock()
    breakers = outage(clock, 5, 0.013)  # waits that end between ticks
    ends = {name: b.opened_at + WAIT for name, b in breakers._breakers.items() if b.opened_at is not None}
    moved_at: dict[str, float] = {}
    while len(moved_at) < len(ends):
        clock.now += TICK
        for move in breakers.tick():
            moved_at[move.name] = clock.now
    for name, end in ends.items():
        assert end <= moved_at[name] < end + TICK  # not before its own time, at most a tick late


def test_a_burst_of_waits_ending_together_is_worked_in_slices(counted: list[str]) -> None:
    clock = Clock()
    breakers = outage(clock, 20, 0.0)  # 2,000 OPEN with one opened_at
    clock.now += WAIT + TICK
    clock.step = 0.0005  # each reading of the clock half a millisecond on
    slices = []
    while True:
        slices.append(len(breakers.tick(slice_secs=0.01)))
        if not breakers.tick_cut:
            break
    assert len(slices) > 10 and max(slices) < 2000  # no one call worked the whole burst
    assert sum(slices) == 2000
    assert not breakers.tick_due()
    assert sorted(counted) == sorted(breakers._breakers)  # each looked at once
    assert all(b.state is BreakerState.HALF_OPEN for b in breakers._breakers.values())
    clock.step = 0.0
    before = len(counted)
    clock.now += TICK
    breakers.tick()
    assert len(counted) == before


def test_without_a_slice_a_tick_works_the_whole_burst(counted: list[str]) -> None:
    clock = Clock()
    breakers = outage(clock, 10, 0.0)
    clock.now += WAIT
    clock.step = 0.0005
    assert len(breakers.tick()) == 1000  # (a virtual clock's replay: no slices, as before)
