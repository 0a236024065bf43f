"""Run or replay simulated schedules: ``python -m tests.sim_fleet --seed N [-v]`` replays
one (``-v`` prints its events and the control plane's log, ``--window`` the worst window of an
I4 violation: who admitted under which lease, epoch and horizon); ``--count N --first S`` runs
many and prints every failing seed; ``--skew`` runs the schedules whose processes' wall clocks
are apart (``clocks.py``), ``--skew wild`` with clocks that drift fast and step forth and back."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from .schedule import ACTIVE_SECS, SCHEDULE_VERSION, simulate


def _virtual_time(record: logging.LogRecord) -> bool:
    try:
        record.vt = asyncio.get_running_loop().time()
    except RuntimeError:
        record.vt = 0.0
    return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim_fleet")
    parser.add_argument("--seed", type=int, help="replay this schedule")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--window", action="store_true", help="print an I4 violation's worst window")
    parser.add_argument("--active", type=float, default=ACTIVE_SECS, help="virtual seconds of faults")
    parser.add_argument(
        "--schedule-version", type=int, default=SCHEDULE_VERSION, help="the faults a seed draws (schedule.py)"
    )
    parser.add_argument(
        "--skew",
        nargs="?",
        const="apart",
        choices=("apart", "wild"),
        help="each process on a wall clock of its own (clocks.py); wild: fast drift, steps forth and back",
    )
    args = parser.parse_args()
    skewed, wild = args.skew is not None, args.skew == "wild"
    if args.seed is not None:
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(vt)9.3f %(name)s %(levelname)s %(message)s")
            for handler in logging.getLogger().handlers:
                handler.addFilter(_virtual_time)
        result = simulate(
            args.seed,
            verbose=args.verbose,
            active_secs=args.active,
            version=args.schedule_version,
            skewed=skewed,
            wild=wild,
        )
        print(
            result.report()
            if not result.ok
            else f"seed {args.seed}: ok {dict(result.stats)} digest {result.digest}"
        )
        if args.window:
            print("\n".join(result.timeline))
        return 0 if result.ok else 1
    started = time.perf_counter()
    failed = []
    for seed in range(args.first, args.first + args.count):
        result = simulate(
            seed, active_secs=args.active, version=args.schedule_version, skewed=skewed, wild=wild
        )
        if not result.ok:
            failed.append(seed)
            print(result.report(), flush=True)
    took = time.perf_counter() - started
    print(f"{args.count} schedules, {len(failed)} failed, {took:.1f}s: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
