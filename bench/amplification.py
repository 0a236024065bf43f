"""Retry amplification in a full outage at steady call rates, on the agent's own executor
with an injected clock (the budget's decisions, not the network: case 5 measures those
with real processes).

One agent calls a service at a steady rate (or back to back: the next call when the last
one ended) through :class:`Executor` with the default retry budget, ``max_retries = 3``,
the default backoff and a breaker that never opens. The service answers for ``healthy``
seconds, then fails every attempt with UNAVAILABLE for ``outage`` seconds; the figure is
the attempts the service got during the outage per call made then. Beside it: the same
run with the budget's floor held whatever the service's health (the budget before
2026-11-30, Linkerd's and Finagle's). A second table: slow callers (one call a minute to
one every 10 minutes), an hour healthy then 4 hours of outage.

    python -m bench.amplification            # the tables
    python -m bench.amplification --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from dataclasses import dataclass

from mission_control.client.errors import LLMProviderUnavailable, MissionControlError
from mission_control.client.executor import Executor
from mission_control.client.limits import HEALTH_FULL
from mission_control.client.policy import ServicePolicy
from mission_control.client.view import LocalView

SERVICE = "llm_provider"
#: A failed attempt takes this long (an UNAVAILABLE answered at once).
ATTEMPT_SECS = 0.005
#: The rates measured: calls per second; 0 = back to back.
RATES = (1.0, 5.0, 50.0, 0.0)
#: Slow callers: calls per second, measured over an hour healthy then 4 hours failing.
SLOW_RATES = (1 / 60, 1 / 240, 1 / 600)
SLOW_HEALTHY = 3600.0
SLOW_FAILING = 4 * 3600.0


def rate_name(rate: float) -> str:
    if not rate:
        return "back to back"
    if rate >= 1:
        return f"{rate:g}/s"
    minutes = 1 / rate / 60
    return "1/min" if minutes == 1 else f"1/{minutes:g} min"


@dataclass(frozen=True)
class Run:
    rate: float  # calls per second; 0 = back to back
    calls: int  # calls made during the outage
    attempts: int  # attempts the service got during the outage
    floor_always: bool

    @property
    def amplification(self) -> float:
        return self.attempts / self.calls


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, secs: float) -> None:
        self.now += secs


def policy(max_retries: int = 3) -> ServicePolicy:
    """The default policy but for a breaker that never opens and no rate limit."""
    return ServicePolicy(
        service=SERVICE, max_retries=max_retries, failure_threshold=10**6, rate_limit_requests=10**9
    )


def run(rate: float, healthy: float, outage: float, floor_always: bool = False, seed: int = 1) -> Run:
    """One agent at ``rate`` calls/s: ``healthy`` seconds of answers, then ``outage``
    seconds of failures. ``floor_always``: the floor of the budget kept in the outage."""
    random.seed(seed)  # the backoff's jitter
    clock = _Clock()
    ex = Executor(LocalView({SERVICE: policy()}, clock=clock), sleep=clock.sleep)
    state = ex.view.get(SERVICE)
    start = clock.now
    failing_from = start + healthy
    end = failing_from + outage
    counted = {"calls": 0, "attempts": 0}

    def attempt(_left: float) -> str:
        failing = clock.now >= failing_from
        counted["attempts"] += failing
        clock.sleep(ATTEMPT_SECS)
        if failing:
            raise LLMProviderUnavailable(SERVICE, "down")
        return "ok"

    n = 0
    while True:
        due = start + n / rate if rate else clock.now
        if due >= end:
            break
        clock.now = max(clock.now, due)
        counted["calls"] += clock.now >= failing_from
        if floor_always:
            state.budget.health = HEALTH_FULL
        with contextlib.suppress(MissionControlError):
            ex.run(SERVICE, attempt, operation="Echo")
        n += 1
    return Run(rate, counted["calls"], counted["attempts"], floor_always)


def table(healthy: float = 30.0, outage: float = 60.0) -> list[dict[str, object]]:
    """Every rate, the budget as it is and with the floor always held."""
    rows: list[dict[str, object]] = []
    for rate in RATES:
        now, before = run(rate, healthy, outage), run(rate, healthy, outage, floor_always=True)
        rows.append({
            "rate": rate_name(rate),
            "calls": now.calls,
            "amplification": round(now.amplification, 3),
            "floor_always": round(before.amplification, 3),
        })  # fmt: skip
    return rows


def slow_table() -> list[dict[str, object]]:
    """:func:`table` for slow callers: :data:`SLOW_HEALTHY` s healthy, then
    :data:`SLOW_FAILING` s of outage."""
    rows: list[dict[str, object]] = []
    for rate in SLOW_RATES:
        now = run(rate, SLOW_HEALTHY, SLOW_FAILING)
        before = run(rate, SLOW_HEALTHY, SLOW_FAILING, floor_always=True)
        rows.append({
            "rate": rate_name(rate),
            "calls": now.calls,
            "amplification": round(now.amplification, 3),
            "floor_always": round(before.amplification, 3),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=float, default=30.0, help="seconds of answers first")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds of failures then")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = table(args.healthy, args.outage)
    slow = slow_table()
    if args.json:
        print(json.dumps({"by_rate": rows, "slow_callers": slow}, indent=2))
        return
    print(f"retry amplification, {args.healthy:g} s healthy then {args.outage:g} s of full outage,"
          " max_retries 3, default budget")  # fmt: skip
    print(f"{'rate':>14} {'calls':>7} {'now':>7} {'floor always':>13}")
    for r in rows:
        print(f"{r['rate']:>14} {r['calls']:>7} {r['amplification']:>7.2f} {r['floor_always']:>13.2f}")
    print(f"slow callers, {SLOW_HEALTHY / 3600:g} h healthy then {SLOW_FAILING / 3600:g} h of full outage")
    for r in slow:
        print(f"{r['rate']:>14} {r['calls']:>7} {r['amplification']:>7.2f} {r['floor_always']:>13.2f}")


if __name__ == "__main__":
    main()
