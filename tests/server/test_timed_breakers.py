"""The breakers' tick looks only at the breakers time may change (OPEN, or holding permits),
once their time has come: with 15,000 idle ones stored, a walk of all of them every 20 ms tick
kept the loop busy for good, and the lease keep-alive waited behind it on a starved machine.
What time must do still happens: an OPEN's wait ends, a permit expires, however the breaker
got there. Injected clock; what is checked is which breakers a tick takes and what it does
to them."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.policies import PolicyBook
from mission_control.server.timed_breakers import SWEEP_SECS, TimedBreakers

IDLE = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet() -> tuple[FleetBreakers, Clock]:
    book = PolicyBook("/t")
    for service in ("svc", "stored", "held"):
        policy = ServicePolicy(service, failure_threshold=2, wait_duration_secs=5)
        book.apply(book.key(service), policy_to_json(policy).encode(), 1)
    clock = Clock()
    breakers = FleetBreakers(book.policy_of, clock=clock)
    for i in range(IDLE):
        breakers.record("agent", pb.OutcomeSummary(service=f"idle-{i:04d}", successes=1))
    return breakers, clock


def walked(breakers: FleetBreakers, clock: Clock) -> set[str]:
    """The breakers a tick at ``clock.now`` would look at: those scheduled, whatever their time."""
    return set(breakers._timed._at)


def test_a_tick_walks_the_open_breaker_not_the_idle_ones_and_ends_its_wait() -> None:
    breakers, clock = fleet()
    breakers.tick()
    breakers.record("agent", pb.OutcomeSummary(service="svc", failures=2, trailing_failures=2))
    assert breakers.get("svc").state is BreakerState.OPEN
    assert walked(breakers, clock) == {"svc"}
    clock.now += 5.1
    breakers.tick()
    assert breakers.get("svc").state is BreakerState.HALF_OPEN
    assert walked(breakers, clock) == set()  # HALF_OPEN with no permit out: time changes nothing


def test_a_stored_open_state_taken_is_walked() -> None:
    breakers, clock = fleet()
    breakers.tick()
    other = FleetBreakers(breakers._policy_of, clock=clock)
    other.record("agent", pb.OutcomeSummary(service="stored", failures=2, trailing_failures=2))
    breakers.adopt("stored", other.to_record("stored"), 7)
    assert walked(breakers, clock) == {"stored"}
    clock.now += 600  # (a stored wait is at most the policy's longest)
    breakers.tick()
    assert breakers.get("stored").state is BreakerState.HALF_OPEN


def test_a_permit_taken_by_a_caller_holding_the_breaker_expires_within_a_sweep() -> None:
    breakers, clock = fleet()
    breakers.record("agent", pb.OutcomeSummary(service="held", failures=2, trailing_failures=2))
    clock.now += 5.1
    breakers.tick()
    breaker = breakers.get("held")
    assert breaker.state is BreakerState.HALF_OPEN
    breakers.tick()  # not timed now: no longer walked
    assert "held" not in walked(breakers, clock)
    assert breaker.acquire_probe(clock.now, "agent", ttl=1.0) == 1  # not through the engine
    for _ in range(int(max(1.5, SWEEP_SECS * 1.5) / 0.02)):
        clock.now += 0.02
        breakers.tick()  # the sweep finds it, the tick at its expiry drops the permit
    assert breaker._permits == {}
    assert "held" not in walked(breakers, clock)


def test_the_walk_drops_a_forgotten_breaker() -> None:
    timed = TimedBreakers()
    breakers, clock = fleet()
    breakers.record("agent", pb.OutcomeSummary(service="svc", failures=2, trailing_failures=2))
    timed.mark(breakers.get("svc"))
    assert len(timed) == 1
    breakers.forget("svc")
    clock.now += 5.1
    assert list(timed.pop_due(breakers._breakers, clock.now)) == []
    assert len(timed) == 0


class Timed:
    """A breaker as the heap sees it: a name and the time it may change next."""

    def __init__(self, name: str, at: float | None) -> None:
        self.name, self.at = name, at

    def timed_at(self) -> float | None:
        return self.at


def test_a_breaker_its_tick_leaves_due_is_taken_again_by_a_later_tick() -> None:
    """A tick that could not move a breaker marks it again at the same time; the same call
    meets it again and stops there, leaving it for the next tick (it was lost: off the heap
    while still scheduled, so no later mark or sweep put it back)."""
    timed = TimedBreakers()
    breaker = Timed("x", 10.0)
    breakers = {"x": breaker}
    timed.mark(breaker)  # type: ignore[arg-type]
    taken = []
    for got in timed.pop_due(breakers, 10.0):  # type: ignore[arg-type]
        taken.append(got.name)
        timed.mark(got)  # left due: the caller marks it again
    assert taken == ["x"]
    assert timed.due(10.0)
    breaker.at = 12.0  # what time may change it at next
    timed.sweep(breakers, 11.0)  # type: ignore[arg-type]
    assert [got.name for got in timed.pop_due(breakers, 11.0)] == []  # type: ignore[arg-type]
    assert [got.name for got in timed.pop_due(breakers, 12.0)] == ["x"]  # type: ignore[arg-type]
