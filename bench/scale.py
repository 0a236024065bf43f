"""Case 11: one control plane holding many agents (raw Connect streams from a few processes,
loopback): memory per agent, event-loop time of a lease round and of a breaker push, how
long a push takes to reach every agent, and outcomes ingested per second."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as cp
from mission_control.resilience.v1 import control_plane_pb2_grpc as cp_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.procs import Proc

from .common import median, percentile

SERVICE = "scale_llm"
#: Simulated agents per process.
PER_PROCESS = 2500
LEASE_SECS = 2.0


def _policies(stub: cp_grpc.ControlPlaneServiceStub) -> None:
    shared = policy_pb2.ServicePolicy(
        service=SERVICE,
        rate_limit_requests=10**6,
        rate_limit_window_secs=60,
        failure_threshold=10**6,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=LEASE_SECS),
    )
    load = policy_pb2.ServicePolicy(
        service=SERVICE + "_load", failure_threshold=10**6, rate_limit_requests=10**9
    )
    for policy in (shared, load):
        stub.PutPolicy(cp.PutPolicyRequest(policy=policy), timeout=30)


def _quit(plane: Proc) -> None:
    """Let the plane end on its own (a profile is written then), else kill it."""
    with contextlib.suppress(OSError, ValueError):
        plane.send("quit")
    with contextlib.suppress(subprocess.TimeoutExpired):
        plane.popen.wait(timeout=10)
    plane.kill()


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1e3


def measure(
    etcd: str,
    agents: int,
    pushes: int = 10,
    flood_secs: float = 3.0,
    rounds: int = 3,
    lease_slice: int | None = None,
) -> dict[str, Any]:
    """Connect ``agents`` simulated agents to a fresh control plane and time ``rounds``
    lease rounds, ``pushes`` breaker pushes and ``flood_secs`` of outcomes (``lease_slice``:
    leases sent per turn of the plane's loop, 0 for all in one; None: the server's default)."""
    env = dict(os.environ)
    if lease_slice is not None:
        env["MC_SCALE_LEASE_SLICE"] = str(lease_slice)
    plane = Proc([sys.executable, "-m", "bench.scale_plane", etcd, SERVICE], env=env)
    fleet: list[Proc] = []
    try:
        address = f"127.0.0.1:{plane.port(timeout=60)}"
        channel = grpc.insecure_channel(address)
        stub = cp_grpc.ControlPlaneServiceStub(channel)
        _policies(stub)
        before = plane.ask("stats")
        load_before = os.getloadavg()[0]
        procs = max(1, math.ceil(agents / PER_PROCESS))
        sizes = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
        started = time.monotonic()
        fleet = [
            Proc([sys.executable, "-m", "bench.scale_proc", address, str(n), f"s{agents}p{i}", SERVICE])
            for i, n in enumerate(sizes)
        ]
        ready = [p.ask("noop", timeout=180) for p in fleet]
        connected = sum(r["ready"] for r in ready)
        errors = Counter[str]()
        for r in ready:
            errors.update(r["errors"])
        connect_s = time.monotonic() - started
        time.sleep(rounds * LEASE_SECS + 0.5)  # lease rounds with every agent a holder
        held = plane.ask("stats")
        for i in range(pushes):
            plane.ask("push FORCED_OPEN" if i % 2 == 0 else "push CLOSED")
            time.sleep(0.5)
        time.sleep(1.0)
        after = plane.ask("stats")
        seen = [p.ask("report", timeout=60) for p in fleet]
        for proc in fleet:
            proc.send(f"flood {flood_secs}")
        sent = sum(p.ask("noop", timeout=flood_secs + 120)["batches"] for p in fleet)
        flooded = plane.ask("stats")
        channel.close()
    finally:
        for proc in fleet:
            proc.kill()
        _quit(plane)
    return _summary(agents, connected, connect_s, before, held, after, seen, flooded, flood_secs, sent) | {
        "lease_slice": lease_slice,
        "load_1m_before": load_before,
        "stream_errors": dict(errors),
        "load_1m_after": os.getloadavg()[0],
    }


def _summary(
    agents: int,
    connected: int,
    connect_s: float,
    before: dict[str, Any],
    held: dict[str, Any],
    after: dict[str, Any],
    seen: list[dict[str, Any]],
    flooded: dict[str, Any],
    flood_secs: float,
    sent: int,
) -> dict[str, Any]:
    rounds = [r for r in after["rounds"] if r["cpu_s"] is not None][-4:]
    late: list[float] = []
    last: list[float] = []
    missing = 0
    for push in after["pushes"]:
        got = [t for r in seen for t in r["pushes"].get(str(push["changed_at"]), [])]
        missing += connected - len(got)
        late += [t - push["wall"] for t in got]
        if got:
            last.append(max(got) - push["wall"])
    return {
        "agents": agents,
        "connected": connected,
        "connect_s": connect_s,
        "rss_per_agent_kib": (held["rss_kib"] - before["rss_kib"]) / max(1, connected),
        "leases_received": sum(r["leases"] for r in seen),
        "round_sync_ms": median([r["sync_s"] for r in rounds]) * 1e3,
        "round_loop_ms": median([r["cpu_s"] for r in rounds]) * 1e3,
        "round_loop_max_ms": max((r["cpu_s"] for r in rounds), default=math.nan) * 1e3,
        "round_stall_max_ms": max((r["stall_s"] for r in rounds), default=math.nan) * 1e3,
        "push_sync_ms": median([p["sync_s"] for p in after["pushes"]]) * 1e3,
        "push_loop_ms": median([p["cpu_s"] for p in after["pushes"] if p["cpu_s"] is not None]) * 1e3,
        "pushes": len(after["pushes"]),
        "push_missing": missing,
        "push_p50_ms": _ms(late, 50),
        "push_p99_ms": _ms(late, 99),
        "push_all_max_ms": max(last, default=math.nan) * 1e3,
        "loop_lag_p99_ms": after["lag_p99_s"] * 1e3,
        "loop_lag_max_ms": after["lag_max_s"] * 1e3,
        "gc_max_ms": after["gc_max_s"] * 1e3,
        "gc_ms": after["gc_s"] * 1e3,
        "outcomes_per_s": (flooded["outcomes"] - after["outcomes"]) / flood_secs,
        "batches_sent": sent,
    }


def run(
    sizes: tuple[int, ...] = (1000, 3000, 10_000), slices: tuple[int | None, ...] = (None,), **options: Any
) -> list[dict[str, Any]]:
    """The scaling curve: one fresh control plane per size and lease slice (the slices
    side by side at each size), on one etcd (``options`` go to :func:`measure`)."""
    with tempfile.TemporaryDirectory(prefix="mc-scale-") as tmp:
        etcd = EtcdProcess(Path(tmp) / "etcd", log_file=Path(tmp) / "etcd.log").start()
        try:
            return [measure(etcd.endpoint, n, lease_slice=s, **options) for n in sizes for s in slices]
        finally:
            etcd.stop()


if __name__ == "__main__":
    import json

    # python -m bench.scale [SIZE ...] [slices=0,500]: 0 sends a round's leases in one turn
    words = [a for a in sys.argv[1:] if not a.startswith("slices=")]
    chosen = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("slices=")]
    slices = tuple(int(s) for s in chosen[0].split(",")) if chosen else (None,)
    for size in tuple(int(a) for a in words) or (1000,):
        for row in run((size,), slices):
            print(json.dumps(row), flush=True)
