"""Retry amplification while a service flaps, on the agent's own executor with an injected
clock (as :mod:`bench.amplification` measures a full outage).

One agent calls a service at a steady rate (or back to back) through :class:`Executor` with
the default retry budget, ``max_retries = 3``, the default backoff and a breaker that never
opens. The service answers for ``healthy`` seconds, then flaps for ``flapping`` seconds in
one of three ways:

* ``alternate``: it fails every other attempt it gets (a retry of a failed call succeeds);
* ``random``: each attempt fails with probability one half (seeded);
* ``periods``: it fails every attempt for 2 s, then answers for 2 s, and so on.

The figure is the attempts the service got while flapping per call made then. A second
table: slow callers (one call a minute to one every 10 minutes), an hour healthy then 4
hours of ``alternate`` or ``random``.

    python -m bench.flapping            # the tables
    python -m bench.flapping --json
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from mission_control.client.errors import LLMProviderUnavailable, MissionControlError
from mission_control.client.executor import Executor
from mission_control.client.view import LocalView

from bench.amplification import (
    ATTEMPT_SECS,
    RATES,
    SERVICE,
    SLOW_FAILING,
    SLOW_HEALTHY,
    SLOW_RATES,
    policy,
    rate_name,
)

PATTERNS = ("alternate", "random", "periods")
#: ``periods``: seconds failing, then seconds answering.
PERIOD_SECS = 2.0


@dataclass(frozen=True)
class Run:
    pattern: str
    rate: float  # calls per second; 0 = back to back
    calls: int  # calls made while the service flapped
    attempts: int  # attempts the service got then
    failed_calls: int  # calls that ended in an error then

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


def _fails(pattern: str, since: float, rng: random.Random) -> Callable[[float, int], bool]:
    """Whether the ``n``-th attempt of the flapping service, made at ``now``, fails."""
    if pattern == "alternate":
        return lambda _now, n: n % 2 == 0
    if pattern == "random":
        return lambda _now, _n: rng.random() < 0.5
    if pattern == "periods":
        return lambda now, _n: (now - since) % (2 * PERIOD_SECS) < PERIOD_SECS
    raise ValueError(pattern)


def run(pattern: str, rate: float, healthy: float = 30.0, flapping: float = 60.0, seed: int = 1) -> Run:
    """One agent at ``rate`` calls/s: ``healthy`` seconds of answers, then ``flapping``
    seconds of ``pattern``."""
    random.seed(seed)  # the backoff's jitter
    clock = _Clock()
    ex = Executor(LocalView({SERVICE: policy()}, clock=clock), sleep=clock.sleep)
    start = clock.now
    flapping_from = start + healthy
    end = flapping_from + flapping
    fails = _fails(pattern, flapping_from, random.Random(seed))
    counted = {"calls": 0, "attempts": 0, "failed": 0}

    def attempt(_left: float) -> str:
        now = clock.now
        flaps = now >= flapping_from
        n = counted["attempts"]
        counted["attempts"] += flaps
        clock.sleep(ATTEMPT_SECS)
        if flaps and fails(now, n):
            raise LLMProviderUnavailable(SERVICE, "flapping")
        return "ok"

    n = 0
    while True:
        due = start + n / rate if rate else clock.now
        if due >= end:
            break
        clock.now = max(clock.now, due)
        counts = clock.now >= flapping_from
        counted["calls"] += counts
        try:
            ex.run(SERVICE, attempt, operation="Echo")
        except MissionControlError:
            counted["failed"] += counts
        n += 1
    return Run(pattern, rate, counted["calls"], counted["attempts"], counted["failed"])


def table(healthy: float = 30.0, flapping: float = 60.0) -> list[dict[str, object]]:
    """Every pattern at every rate."""
    rows: list[dict[str, object]] = []
    for pattern in PATTERNS:
        for rate in RATES:
            r = run(pattern, rate, healthy, flapping)
            rows.append({
                "pattern": pattern,
                "rate": rate_name(rate),
                "calls": r.calls,
                "failed": r.failed_calls,
                "amplification": round(r.amplification, 3),
            })  # fmt: skip
    return rows


def slow_table() -> list[dict[str, object]]:
    """``alternate`` and ``random`` for slow callers (2 s periods are not seen by them)."""
    rows: list[dict[str, object]] = []
    for pattern in ("alternate", "random"):
        for rate in SLOW_RATES:
            r = run(pattern, rate, SLOW_HEALTHY, SLOW_FAILING)
            rows.append({
                "pattern": pattern,
                "rate": rate_name(rate),
                "calls": r.calls,
                "failed": r.failed_calls,
                "amplification": round(r.amplification, 3),
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--healthy", type=float, default=30.0, help="seconds of answers first")
    parser.add_argument("--flapping", type=float, default=60.0, help="seconds of flapping then")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = table(args.healthy, args.flapping)
    slow = slow_table()
    if args.json:
        print(json.dumps({"by_rate": rows, "slow_callers": slow}, indent=2))
        return
    print(f"retry amplification, {args.healthy:g} s healthy then {args.flapping:g} s flapping,"
          " max_retries 3, default budget")  # fmt: skip
    print(f"{'pattern':>10} {'rate':>14} {'calls':>7} {'failed':>7} {'amplification':>14}")
    for r in rows:
        print(
            f"{r['pattern']:>10} {r['rate']:>14} {r['calls']:>7} {r['failed']:>7} {r['amplification']:>14.2f}"
        )
    print(f"slow callers, {SLOW_HEALTHY / 3600:g} h healthy then {SLOW_FAILING / 3600:g} h flapping")
    for r in slow:
        print(
            f"{r['pattern']:>10} {r['rate']:>14} {r['calls']:>7} {r['failed']:>7} {r['amplification']:>14.2f}"
        )


if __name__ == "__main__":
    main()
