"""``make bench``: every case, side by side in one run; a table on stdout, JSON in bench/results."""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from . import (
    amplification,
    flapping,
    fleet_cases,
    hedging,
    overhead,
    propagation_gil,
    slow_calls,
    spool_replay,
)
from .common import ROOT, dump, machine, stack


def _table(title: str, rows: list[dict[str, object]], columns: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    header = [c[1] for c in columns]
    cells = [
        [format(r[c[0]], c[2]) if isinstance(r[c[0]], float) else str(r[c[0]]) for c in columns] for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


HEDGING_TITLE = "10. hedging: 3 % of calls ('all slow': all) turn slow (2 s); p99 seen by agents, extra calls"
HEDGING_COLUMNS = [
    ("shape", "healthy latency", ""),
    ("variant", "variant", ""),
    ("p50_ms", "p50 ms", ".1f"),
    ("p99_ms", "p99 ms", ".1f"),
    ("p99_vs_healthy", "p99 x healthy", ".2f"),
    ("extra_calls", "extra calls", ".3f"),
    ("delay_ms", "hedge delay ms", ".1f"),
    ("floor_vs_healthy", "floor x healthy", ".2f"),
    ("goal", "p99 <= 1.5x, extra < 10 %", ""),
    ("load_1m", "load (1 min)", ".1f"),
]


OVERHEAD_COLUMNS = [
    ("variant", "variant", ""),
    ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("calls_per_s", "calls/s", ".0f"),
    ("cpu_us_per_call", "client CPU us/call", ".0f"),
    ("p50_ratio", "p50 x bare", ".2f"),
    ("cpu_ratio", "CPU x bare", ".2f"),
    ("thread_cpu_us_per_call", "calling thread us/call", ".0f"),
    ("thread_cpu_ratio", "thread x bare", ".2f"),
]


PUSH_FLOOR_COLUMNS = [
    ("streams", "streams", ""),
    ("variant", "variant", ""),
    ("load_1m_before", "load", ".1f"),
    ("cpu_ms", "CPU to last write ms", ".1f"),
    ("cpu_us_per_stream", "us/stream", ".1f"),
    ("cpu_vs_floor", "x floor", ".2f"),
    ("loop_cpu_ms", "loop CPU ms", ".1f"),
    ("last_issue_ms", "last write issued ms", ".1f"),
    ("receipt_p99_ms", "receipt p99 ms", ".1f"),
    ("last_receipt_ms", "last receipt ms", ".1f"),
    ("missing", "missing", ""),
]


SCALE_COLUMNS = [
    ("connected", "agents", ""),
    ("load_1m_before", "load", ".1f"),
    ("rss_per_agent_kib", "KiB/agent", ".1f"),
    ("round_sync_ms", "lease round ms", ".1f"),
    ("round_stall_max_ms", "longest hold ms", ".1f"),
    ("round_loop_ms", "+ delivery, loop CPU ms", ".1f"),
    ("push_loop_ms", "push loop CPU ms", ".1f"),
    ("push_p50_ms", "push p50 ms", ".1f"),
    ("push_p99_ms", "push p99 ms", ".1f"),
    ("push_all_max_ms", "push to all, max ms", ".1f"),
    ("loop_lag_max_ms", "loop lag max ms", ".1f"),
    ("outcomes_per_s", "outcomes/s", ".0f"),
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
        load = overhead.load_text(case1["load"])
        _table(f"1. per-call overhead, sync (unary loopback echo; {load})", case1["sync"], OVERHEAD_COLUMNS)
        _table(f"1. per-call overhead, aio ({load})", case1["aio"], OVERHEAD_COLUMNS)
        decision = overhead.decision_only(n=20_000 if args.quick else 100_000)
        results["decision_only"] = decision
        _table(
            "1b. the resilience layer alone (no gRPC, no-op function)",
            decision,
            [("variant", "variant", ""), ("cpu_us_per_call", "CPU us/call", ".1f")],
        )
        case2 = fleet_cases.breaker_propagation(s, trips=5 if args.quick else 30)
        results["breaker_propagation"] = case2
        _table(
            "2. breaker propagation: A trips, B (another process) fails fast; idle and with a "
            "spinning process per core, interleaved",
            list(case2.values()),
            [
                ("variant", "machine", ""),
                ("load_1m", "load (1 min)", ".1f"),
                ("trips", "trips", ""),
                ("measured", "measured", ""),
                ("p50_ms", "p50 ms", ".1f"),
                ("p99_ms", "p99 ms", ".1f"),
                ("max_ms", "max ms", ".1f"),
            ],
        )
        case2c = propagation_gil.run(s, trips=5 if args.quick else 30)
        results["propagation_busy_app"] = case2c
        _table(
            "2c. breaker propagation to agents with a busy application thread: switch interval "
            "5 ms and 1 ms, side by side",
            case2c,
            [
                ("variant", "agent", ""),
                ("load_1m", "load (1 min)", ".1f"),
                ("measured", "measured", ""),
                ("p50_ms", "p50 ms", ".1f"),
                ("p99_ms", "p99 ms", ".1f"),
            ],
        )
        case3 = fleet_cases.config_propagation(s, agents=50, changes=3 if args.quick else 10)
        results["config_propagation"] = case3
        _table(
            "3. config propagation: etcd put until each of 50 agents enforces it",
            [case3],
            [
                ("agents", "agents", ""),
                ("changes", "changes", ""),
                ("missing", "missing", ""),
                ("p50_ms", "p50 ms", ".1f"),
                ("p99_ms", "p99 ms", ".1f"),
                ("all_agents_p50_ms", "all 50, p50 ms", ".1f"),
                ("all_agents_max_ms", "all 50, max ms", ".1f"),
            ],
        )
        case4 = fleet_cases.capacity(
            s, seconds=2 if args.quick else 5, idle_agents=200 if args.quick else 1000
        )
        results["capacity"] = case4
        _table(
            "4. control-plane capacity",
            [case4],
            [
                ("outcomes_per_s", "outcomes/s", ".0f"),
                ("batches_per_s", "batches/s", ".0f"),
                ("plane_cpu_share", "plane CPU (cores)", ".2f"),
                ("idle_agents_connected", "agents held", ""),
                ("rss_before_mib", "RSS MiB before", ".1f"),
                ("rss_after_mib", "RSS MiB after", ".1f"),
                ("rss_per_agent_kib", "KiB/agent", ".1f"),
            ],
        )
        case5 = fleet_cases.amplification(s, calls=50 if args.quick else 200)
        results["amplification"] = case5
        rows = [{"variant": k, "ratio": v} for k, v in case5["amplification"].items()]
        _table(
            "5. retry amplification in a full outage (upstream calls / app calls, max_retries 3)",
            rows,
            [("variant", "variant", ""), ("ratio", "ratio", ".2f")],
        )
        case5b = amplification.table()
        results["amplification_by_rate"] = case5b
        _table(
            "5b. retry amplification by rate: 30 s healthy, 60 s of full outage (executor, injected clock)",
            case5b,
            [
                ("rate", "rate", ""),
                ("calls", "calls in the outage", ""),
                ("amplification", "ratio", ".2f"),
                ("floor_always", "floor always held", ".2f"),
            ],
        )
        case5c = flapping.table()
        results["amplification_flapping"] = case5c
        _table(
            "5c. retry amplification of a flapping service: 30 s healthy, 60 s flapping (executor, injected)",
            case5c,
            [
                ("pattern", "pattern", ""),
                ("rate", "rate", ""),
                ("calls", "calls while flapping", ""),
                ("failed", "failed", ""),
                ("amplification", "ratio", ".2f"),
            ],
        )
        case5d = [{"pattern": "outage", **r} for r in amplification.slow_table()] + flapping.slow_table()
        results["amplification_slow_callers"] = case5d
        _table(
            "5d. retry amplification of slow callers: 1 h healthy, 4 h of outage or flapping (injected)",
            case5d,
            [
                ("pattern", "pattern", ""),
                ("rate", "rate", ""),
                ("calls", "calls in the outage or flapping", ""),
                ("amplification", "ratio", ".2f"),
            ],
        )
        case9 = slow_calls.slow_call_trip(s, rounds=2 if args.quick else 5)
        results["slow_call_trip"] = case9
        _table(
            "9. slow-call breaker: upstream latency 50 ms -> 2 s, until the fleet breaker opens",
            [case9],
            [
                ("rounds", "rounds", ""),
                ("opened", "opened", ""),
                ("decided_p50_s", "decided p50 s", ".2f"),
                ("decided_max_s", "decided max s", ".2f"),
                ("seen_by_b_max_s", "agent B fails fast, max s", ".2f"),
                ("calls_failed", "calls failed", ""),
            ],
        )
    with stack() as s:
        case7 = fleet_cases.fleet_limits(s, seconds=4 if args.quick else 6)
    results["fleet_limits"] = case7
    _table(
        "7. fleet-wide rate limit (10 agents, 100/s for the fleet, 0.5 s leases)",
        [case7],
        [
            ("admitted_per_s", "admitted/s", ".1f"),
            ("utilisation", "of limit", ".2f"),
            ("worst_window_vs_limit", "worst window / limit", ".2f"),
        ],
    )
    _table(
        "7. per-call cost of the limit (decision only, no-op call)",
        [{"variant": k, "cpu_us": v} for k, v in case7["cost_us"].items()],
        [("variant", "variant", ""), ("cpu_us", "CPU us/call", ".1f")],
    )
    case10 = hedging.run(calls=300 if args.quick else 2000)
    results["hedging"] = case10
    _table(HEDGING_TITLE, case10, HEDGING_COLUMNS)
    case12 = spool_replay.run(n=100 if args.quick else 300)
    results["spool_replay"] = case12
    _table(
        "12. write spool replay once storage is back (a real gRPC upstream; writes/s timed at it)",
        case12,
        [
            ("variant", "variant", ""),
            ("writes", "writes", ""),
            ("upstream_ms", "upstream ms", ".0f"),
            ("writes_per_s", "replayed writes/s", ".0f"),
            ("fsyncs_per_write", "fsyncs per write", ".3f"),
        ],
    )
    from mission_control.server.demo import run_demo

    print("\n8. the seed's KPIs on the demo scenario (mission-control demo, seed 1)")
    results["kpis"] = run_demo(duration=20 if args.quick else 40, seed=1, live=False)
    case6 = fleet_cases.failover(rounds=2 if args.quick else 5)
    results["failover"] = case6
    _table(
        "6. failover: leader replica killed -> next transition decided (lease TTL 3 s)",
        [case6],
        [
            ("rounds", "rounds", ""),
            ("measured", "measured", ""),
            ("load_1m", "load (1 min)", ".1f"),
            ("p50_s", "p50 s", ".2f"),
            ("p99_s", "p99 s", ".2f"),
            ("lease_gone_p50_s", "lease gone p50 s", ".2f"),
            ("campaign_p50_s", "+ campaign p50 s", ".3f"),
            ("decide_p50_s", "+ decide p50 s", ".3f"),
        ],
    )
    from . import scale

    case11 = scale.run((200, 1000) if args.quick else (1000, 3000, 10_000))
    results["scale"] = case11
    _table(
        "11. agents per control plane (raw Connect streams from a few processes, loopback)",
        case11,
        SCALE_COLUMNS,
    )
    from . import push_floor

    case11b = push_floor.run((200, 1000) if args.quick else (1000, 3000, 10_000))
    results["push_floor"] = case11b
    _table(
        "11b. one message to every stream: the grpc.aio floor and the control plane's push, interleaved",
        case11b,
        PUSH_FLOOR_COLUMNS,
    )
    results["seconds"] = round(time.time() - started, 1)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dump(ROOT / "bench" / "results" / f"bench-{stamp}.json", results)
    dump(ROOT / "bench" / "results" / "latest.json", results)
    print(f"\nwritten: bench/results/latest.json ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
