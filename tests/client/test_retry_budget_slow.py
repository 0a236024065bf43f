"""The retry budget of a slow caller: one call a minute to one an hour, on the agent's own
executor with an injected clock, the default budget and ``max_retries = 3``. Time gives
the health score back only what successes earned, so a full outage stays under the goal
however long the time between calls, a partly failing service loses its floor at any rate,
and a working service's rare failures are still retried."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from mission_control.client.errors import LLMProviderUnavailable, MissionControlError
from mission_control.client.executor import Executor
from mission_control.client.view import LocalView

from bench import amplification
from bench.amplification import ATTEMPT_SECS, SERVICE

GOAL = 1.3
HOUR = 3600.0

#: Whether an attempt fails: (call index, attempt within the call, attempt index, rng).
Fails = Callable[[int, int, int, random.Random], bool]


def calls(interval: float, count: int, fails: Fails, healthy: int = 0, seed: int = 1) -> tuple[int, int]:
    """``healthy`` working calls, then ``count`` calls ``interval`` s apart whose attempts
    fail as ``fails`` says: (attempts of those calls, those calls that failed)."""
    random.seed(seed)  # the backoff's jitter
    rng = random.Random(seed)
    clock = amplification._Clock()
    ex = Executor(LocalView({SERVICE: amplification.policy()}, clock=clock), sleep=clock.sleep)
    seen = {"call": -healthy, "in_call": 0, "attempts": 0}

    def attempt(_left: float) -> str:
        clock.sleep(ATTEMPT_SECS)
        call, in_call, n = seen["call"], seen["in_call"], seen["attempts"]
        seen["in_call"] += 1
        if call < 0:
            return "ok"
        seen["attempts"] += 1
        if fails(call, in_call, n, rng):
            raise LLMProviderUnavailable(SERVICE, "down")
        return "ok"

    failed = 0
    due = clock.now
    for _ in range(healthy + count):
        clock.now = max(clock.now, due)
        seen["in_call"] = 0
        try:
            ex.run(SERVICE, attempt, operation="Echo")
        except MissionControlError:
            failed += seen["call"] >= 0
        seen["call"] += 1
        due += interval
    return seen["attempts"], failed


def down(_call: int, _in_call: int, _n: int, _rng: random.Random) -> bool:
    return True


@pytest.mark.parametrize("interval", [60, 120, 240, 480, 600, HOUR])
@pytest.mark.parametrize("healthy", [0, 20])
def test_a_full_outage_stays_under_the_goal_however_slow_the_caller(interval: float, healthy: int) -> None:
    """Before, time gave the score back whatever the outcomes: two points between calls
    four minutes apart, so every call was retried (2.05x at one call per 4 min, 4.00x at
    one per 8 min or slower). Now the outage's first call is retried 3 times and the next
    at most twice (what the successes before earned), then no call is."""
    count = max(24, round(4 * HOUR / interval))
    attempts, failed = calls(interval, count, down, healthy=healthy)
    assert failed == count
    assert attempts - count <= 3 + 2
    assert attempts / count <= GOAL


@pytest.mark.parametrize(
    ("interval", "fails"),
    [
        (60, lambda _c, _a, _n, rng: rng.random() < 1 / 3),  # before: 1.37x
        (60, lambda _c, _a, n, _rng: n % 3 == 0),  # one of three replicas, round robin: 1.50x
        (600, lambda _c, _a, n, _rng: n % 2 == 0),  # every other attempt: 2.00x
        (600, lambda _c, _a, _n, rng: rng.random() < 0.5),  # 1.85x
        (600, lambda c, _a, _n, _rng: c % 2 == 0),  # every other call fails: 2.50x
        (600, lambda _c, _a, _n, rng: rng.random() < 0.9),  # 3.43x
    ],
    ids=["1min-random-third", "1min-round-robin-third", "10min-alternate", "10min-random-half",
         "10min-every-other-call", "10min-random-0.9"],
)  # fmt: skip
def test_a_partly_failing_service_stays_under_the_goal_however_slow_the_caller(
    interval: float, fails: Fails
) -> None:
    """A success gives back at most 0.3 of the point a failure took, so a service failing
    a third of its attempts or more loses its floor at any call rate (before, time gave a
    slow caller more back between two calls than its failures took)."""
    count = 240
    attempts, _failed = calls(interval, count, fails, healthy=20)
    assert attempts / count <= GOAL


@pytest.mark.parametrize("interval", [60, 600, HOUR])
def test_a_working_services_rare_failures_are_retried_however_slow_the_caller(interval: float) -> None:
    """A first attempt failing every tenth call: every call is served (its retry)."""
    attempts, failed = calls(interval, 240, lambda c, a, _n, _rng: c % 10 == 9 and a == 0, healthy=20)
    assert failed == 0
    assert attempts == 240 + 24


@pytest.mark.parametrize("interval", [60, 600, HOUR])
def test_a_lone_failing_call_does_not_cost_the_next_ones_their_retries(interval: float) -> None:
    """A call failing all its attempts takes 4 points; what the successes before it earned
    comes back with time, so the next calls' first failures are still retried."""

    def fails(call: int, in_call: int, _n: int, _rng: random.Random) -> bool:
        return call == 0 or (call in (3, 5) and in_call == 0)

    attempts, failed = calls(interval, 6, fails, healthy=20)
    assert failed == 1  # the lone failing call only
    assert attempts == 4 + 1 + 1 + 2 + 1 + 2


@pytest.mark.parametrize("interval", [60, 600, HOUR])
def test_after_an_outage_a_few_successes_bring_the_floor_back(interval: float) -> None:
    """However long the outage (100 calls here), the score is a point under the floor when
    it ends, and seven successes make it whole enough for the next failure's retry."""
    outage, working = 100, 7

    def fails(call: int, in_call: int, _n: int, _rng: random.Random) -> bool:
        return call < outage or (call == outage + working and in_call == 0)

    attempts, failed = calls(interval, outage + working + 1, fails, healthy=20)
    assert failed == outage
    assert attempts - (outage + working + 1) <= 3 + 2 + 1  # the outage's retries, then the one
