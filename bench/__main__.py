"""``make bench``: every case, side by side in one run; a table on stdout, JSON in bench/results."""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from . import overhead
from .common import ROOT, dump, machine, stack


def _table(title: str, rows: list[dict[str, object]], columns: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    header = [c[1] for c in columns]
    cells = [[format(r[c[0]], c[2]) if isinstance(r[c[0]], float) else str(r[c[0]]) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


OVERHEAD_COLUMNS = [
    ("variant", "variant", ""),
    ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("calls_per_s", "calls/s", ".0f"),
    ("cpu_us_per_call", "client CPU us/call", ".0f"),
    ("p50_ratio", "p50 x bare", ".2f"),
    ("cpu_ratio", "CPU x bare", ".2f"),
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    started = time.time()
    results: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "make bench",
    }
    print(f"mission-control benchmarks, {results['date']}, {machine()}")
    with stack() as s:
        rounds, n = (2, 200) if args.quick else (7, 1000)
        case1 = overhead.run(s, rounds=rounds, n=n)
        results["overhead"] = case1
        _table("1. per-call overhead, sync (unary loopback echo)", case1["sync"], OVERHEAD_COLUMNS)
        _table("1. per-call overhead, aio", case1["aio"], OVERHEAD_COLUMNS)
    results["seconds"] = round(time.time() - started, 1)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dump(ROOT / "bench" / "results" / f"bench-{stamp}.json", results)
    dump(ROOT / "bench" / "results" / "latest.json", results)
    print(f"\nwritten: bench/results/latest.json ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
