"""What the demo shows (server/demo.py): breaker transitions as the control plane streams
them, a line a second while the scenario runs, and the KPI table at the end.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, TextIO

import grpc
from mission_control.client.config import policy_from_proto
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

from . import kpis
from .demo_checks import checks_note
from .demo_scenario import AGENTS, POLICIES, read_jsonl


class Watcher(threading.Thread):
    """Records every breaker transition (wall time, name, state) from WatchBreakers."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.transitions: list[tuple[float, str, str]] = []
        self.states: dict[str, str] = {}
        self._call: Any = None

    def run(self) -> None:
        stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(self.address))
        self._call = stub.WatchBreakers(pb.WatchBreakersRequest())
        try:
            for event in self._call:
                state = pb.BreakerState.Name(event.breaker.state).removeprefix("BREAKER_STATE_")
                if self.states.get(event.breaker.name) != state:
                    self.transitions.append((time.time(), event.breaker.name, state))
                self.states[event.breaker.name] = state
        except grpc.RpcError:
            pass

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()


def phase_label(phases: list[kpis.Phase], now: float) -> str:
    active = [f"{p.upstream} {p.mode.split(':')[0]}" for p in phases if p.start <= now < p.end]
    return ", ".join(active) or "healthy"


def show(
    out: TextIO, elapsed: float, duration: float, phases: list[kpis.Phase], watcher: Watcher, folder: Path
) -> None:
    calls = rejected = fallbacks = failed = 0
    for name in AGENTS:
        for row in read_jsonl(folder / f"{name}.jsonl"):
            if "service" not in row:
                continue
            calls += 1
            rejected += row.get("error") in ("CircuitBreakerOpen", "ResourceExhausted")
            fallbacks += row.get("served_by") == "fallback"
            failed += not row.get("ok", True)
    states = " ".join(f"{n}={watcher.states.get(n, 'CLOSED')}" for n in ("llm_provider", "storage_backend"))
    label = phase_label(phases, time.time()) if elapsed >= 0 else "starting"
    out.write(
        f"[{max(0.0, elapsed):5.1f}/{duration:.0f}s] {label:28} {states}  calls={calls} "
        f"failed={failed} rejected={rejected} fallbacks={fallbacks}\n"
    )
    out.flush()


def policies_note() -> str:
    """The demo's own policies in a line: they are tuned to its scenario, not the defaults."""
    shown = []
    for proto in POLICIES:
        if proto.service in ("llm_provider", "storage_backend"):
            policy = policy_from_proto(proto)
            shown.append(
                f"{proto.service} breaker wait {policy.wait_duration_secs:g} s up to "
                f"{policy.longest_wait():g} s, timeout {policy.timeout_secs:g} s"
            )
    return (
        f"the demo's policies, tuned to its minute-long scenario: {'; '.join(shown)}; {checks_note()}; "
        "the defaults wait 60 s; amplification in a full outage with the default retry budget is bench case 5"
    )


def table(out: TextIO, results: dict[str, Any], duration: float, seed: int) -> None:
    out.write(f"\nKPIs (duration {duration:g}s, seed {seed}, {results['calls']} calls)\n")
    rows = kpis.verdicts(results)
    width = max(len(r[0]) for r in rows)
    out.write(f"{'KPI'.ljust(width)}  {'value':>9}  {'seed target':>11}  met  {'goal':>8}  met\n")
    for name, value, target, met, goal, met_goal in rows:
        out.write(f"{name.ljust(width)}  {value:>9}  {target:>11}  {met:3}  {goal:>8}  {met_goal}\n")
    r = results
    lost = ", ".join(f"{k} {v}" for k, v in sorted(r["lost_by_error"].items())) or "none"
    by_service = ", ".join(f"{k} {v}" for k, v in r["false_positives_by_service"].items())
    notes = [
        "detection from the first failed call of the outage",
        f"{r['outage_calls_reached']} of {r['outage_calls']} outage calls reached the failing upstream, "
        f"which got {r['outage_attempts']} attempts in the outage "
        f"({r['outage_attempts'] / max(r['outage_calls'], 1):.2f} per call made)",
        f"{r['faulted_calls']} calls hit by a fault, lost: {lost}",
        f"{r['false_positives']} false positives over {r['healthy_calls']} calls to a healthy upstream "
        f"({by_service}; {r['false_opens']} OPENs on a healthy upstream; {r['false_positives_in_wait']} "
        f"calls stopped within the wait of an OPEN an outage caused, {r['kept_off_after_outage']} "
        "kept off the LLM after it recovered)",
        f"reload took {r['reload_seconds'] or 0:.3f}s",
    ]
    out.write(f"({'; '.join(notes)})\n")
    out.write(f"({policies_note()})\n")
    out.flush()
