"""Run or replay the probe (I3) and lease (I4) schedules outside pytest:
``python -m tests.sim --first S --count N`` runs seeds S..S+N-1 of each kind and prints every
failing one; ``--seed N`` replays one (as ``MC_SIM_SEED=N pytest tests/sim`` does)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from . import leases, probes

KINDS: dict[str, Callable[[int], list[str]]] = {
    "probe": probes.run,
    "probe-skewed": lambda seed: probes.run(seed, skewed=True),
    "lease": leases.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seed", type=int, help="replay this schedule")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--kind", choices=sorted(KINDS), action="append", help="only these (default: all)")
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.count)
    kinds = args.kind or list(KINDS)
    started = time.perf_counter()
    failed = []
    for kind in kinds:
        for seed in seeds:
            violations = KINDS[kind](seed)
            if violations:
                failed.append((kind, seed))
                print(f"{kind} schedule {seed}: {len(violations)} violation(s)", flush=True)
                for v in violations[:10]:
                    print(f"  {v}", flush=True)
    took = time.perf_counter() - started
    print(f"{len(seeds)} seeds x {len(kinds)} kinds, {len(failed)} failed, {took:.1f}s: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
