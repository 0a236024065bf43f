"""Case 11b: what one message to every one of N streams costs at best in grpc.aio (the
floor), and what the control plane's push costs beside it, in interleaved rounds.

    python -m bench.push_floor [N ...] [rounds=R]

One server process (``bench/push_floor_server.py``) holds N streams of each variant open,
from client processes (``bench/push_floor_client.py``, 2,500 streams of each variant per
process, 100 per HTTP/2 connection, loopback, on the same machine). Per push: the server's
CPU (all its threads) and its event loop's CPU from the push to the last write done, the
wall time to the first and the last write done, and the wall time to each client's receipt
of it (p50, p99, the last). Figures are medians over the rounds of a variant.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from typing import Any

from tests.support.procs import Proc

from .common import median, percentile

#: Streams of each variant per client process.
PER_PROCESS = 2500
#: The variants measured by default (bench/push_floor_server.py has more).
KINDS = ("floor", "ours", "ours_before")


def _end(proc: Proc) -> None:
    with contextlib.suppress(OSError, ValueError):
        proc.send("quit")
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=10)
    proc.kill()


def _wait_for_streams(
    server: Proc, streams: int, kinds: tuple[str, ...], timeout: float = 300.0
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        held = server.ask("streams")
        if all(held[k] >= streams for k in kinds) or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


def _pushes(server: Proc, rounds: int, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    pushes: list[dict[str, Any]] = []
    for r in range(rounds + 1):  # the first of each is a warm-up
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            round_id = len(pushes) + 1
            pushes.append(
                server.ask(f"push {kind} {round_id}", timeout=90) | {"round": round_id, "warm": r == 0}
            )
            time.sleep(0.5)  # let the clients take it before the next one
    return pushes


def _receipts(
    clients: list[Proc], pushes: list[dict[str, Any]], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """What the clients received, once every stream has every push (or at the timeout)."""
    wanted = sum(p["written"] for p in pushes)
    deadline = time.monotonic() + timeout
    while True:
        seen = [c.ask("report", timeout=120) for c in clients]
        got = sum(len(times) for client in seen for kind, rounds in client.items() if kind != "errors"
                  for times in rounds.values())  # fmt: skip
        if got >= wanted or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def measure(streams: int, rounds: int = 4, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """``rounds`` pushes of each variant to ``streams`` streams of each, interleaved (the
    first of ``kinds`` is what the others are compared with)."""
    server = Proc([sys.executable, "-m", "bench.push_floor_server"])
    clients: list[Proc] = []
    try:
        floor_port, ours_port = server.wait_for("PORTS ", 60).split()[1:3]
        procs = max(1, math.ceil(streams / PER_PROCESS))
        sizes = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        clients = [
            Proc([sys.executable, "-m", "bench.push_floor_client", f"127.0.0.1:{floor_port}",
                  f"127.0.0.1:{ours_port}", str(n), f"c{i}", ",".join(kinds)])
            for i, n in enumerate(sizes)
        ]  # fmt: skip
        for client in clients:
            client.ask("noop", timeout=120)
        held = _wait_for_streams(server, streams, kinds)
        connect_s = time.monotonic() - started
        pushes = _pushes(server, rounds, kinds)
        seen = _receipts(clients, pushes)
        load_after = os.getloadavg()[0]
    finally:
        for proc in clients:
            _end(proc)
        _end(server)
    rows = [
        _variant(kind, [p for p in pushes if p["kind"] == kind and not p["warm"]], seen) for kind in kinds
    ]
    for row in rows:
        row |= {"streams": streams, "connected": held[row["variant"]], "connect_s": connect_s,
                "load_1m_before": load_before, "load_1m_after": load_after}  # fmt: skip
    floor = rows[0]
    for row in rows:
        row["cpu_vs_floor"] = row["cpu_ms"] / floor["cpu_ms"]
        row["last_receipt_vs_floor"] = row["last_receipt_ms"] / floor["last_receipt_ms"]
    return {"streams": streams, "rows": rows}


def _variant(kind: str, pushes: list[dict[str, Any]], seen: list[dict[str, Any]]) -> dict[str, Any]:
    p50s, p99s, lasts, missing = [], [], [], 0
    for push in pushes:
        got = [t - push["wall"] for client in seen for t in client[kind].get(str(push["round"]), [])]
        missing += push["streams"] - len(got)
        if got:
            p50s.append(percentile(got, 50))
            p99s.append(percentile(got, 99))
            lasts.append(max(got))
    done = [p for p in pushes if "cpu_s" in p]
    streams = max((p["streams"] for p in pushes), default=0)
    cpu_ms = median([p["cpu_s"] for p in done]) * 1e3
    return {
        "variant": kind,
        "pushes": len(pushes),
        "unfinished": len(pushes) - len(done),
        "cpu_ms": cpu_ms,
        "cpu_us_per_stream": cpu_ms * 1e3 / max(1, streams),
        "loop_cpu_ms": median([p["loop_cpu_s"] for p in done]) * 1e3,
        "issue_cpu_ms": median([p["issue_cpu_s"] for p in done]) * 1e3,
        "issue_loop_cpu_ms": median([p["issue_loop_cpu_s"] for p in done]) * 1e3,
        "last_issue_ms": median([p["last_issue_s"] for p in done]) * 1e3,
        "first_write_ms": median([p["first_write_s"] for p in done]) * 1e3,
        "last_write_ms": median([p["last_write_s"] for p in done]) * 1e3,
        "receipt_p50_ms": median(p50s) * 1e3,
        "receipt_p99_ms": median(p99s) * 1e3,
        "last_receipt_ms": median(lasts) * 1e3,
        "missing": missing,
        "errors": sum(len(v) for client in seen for v in client.get("errors", {}).values()),
    }


def run(
    sizes: tuple[int, ...] = (1000, 3000, 10_000), rounds: int = 4, kinds: tuple[str, ...] = KINDS
) -> list[dict[str, Any]]:
    """The variants at each size (a fresh server per size); one row per size and variant."""
    return [row for n in sizes for row in measure(n, rounds, kinds)["rows"]]


if __name__ == "__main__":
    import json

    # python -m bench.push_floor [SIZE ...] [rounds=R] [kinds=floor,ours,...]
    words = [a for a in sys.argv[1:] if "=" not in a]
    named = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    kinds = tuple(named["kinds"].split(",")) if "kinds" in named else KINDS
    for size in tuple(int(a) for a in words) or (1000,):
        for row in run((size,), int(named.get("rounds", 4)), kinds):
            print(json.dumps(row), flush=True)
