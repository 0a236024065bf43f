"""The KPIs of an outage and its recovery (definitions in server/kpis.py): time to
detection, breaker efficiency, the attempts an outage drew, recovery rate and what was
lost; and how config changes reached the agents (reload success).
"""

from __future__ import annotations

import math

from .kpis_record import STAND_INS, Run


def time_to_detection(run: Run, service: str) -> float | None:
    """Seconds from the first failed upstream call of the first outage (in time, however the
    phases are listed) to the OPEN after it; ``inf`` when the breaker never opened after it
    (a miss); None when there was no outage or it failed no call."""
    upstream = run.upstream_of[service]
    outages = sorted(
        (p for p in run.phases if p.upstream == upstream and p.mode == "fail"), key=lambda p: p.start
    )
    if not outages:
        return None
    outage = outages[0]
    failures = [
        c["t"] for c in run.upstream_calls.get(upstream, []) if not c["ok"] and c["t"] >= outage.start
    ]
    if not failures:
        return None
    first = min(failures)
    opens = [t for t, name, state in run.transitions if name == service and state == "OPEN" and t >= first]
    return min(opens) - first if opens else math.inf


def breaker_efficiency(run: Run, service: str) -> float | None:
    """Of the calls made during the outages, the share stopped before the upstream."""
    calls, reached = outage_calls(run, service)
    return (calls - reached) / calls if calls else None


def outage_calls(run: Run, service: str) -> tuple[int, int]:
    """Calls made to ``service`` during its hard outages, and how many of them reached the
    failing upstream (what breaker efficiency is computed from)."""
    upstream = run.upstream_of[service]
    outages = [p for p in run.phases if p.upstream == upstream and p.mode == "fail"]
    reached = {c["id"] for c in run.upstream_calls.get(upstream, [])}
    calls = [
        c
        for c in run.agent_calls
        if c["service"] == service and any(p.start <= c["t"] < p.end for p in outages)
    ]
    return len(calls), sum(1 for c in calls if c["id"] in reached)


def outage_attempts(run: Run, service: str) -> int:
    """Attempts the failing upstream received during ``service``'s hard outages (retries
    and probes included): over :func:`outage_calls`, the demo's retry amplification."""
    upstream = run.upstream_of[service]
    outages = [p for p in run.phases if p.upstream == upstream and p.mode == "fail"]
    return sum(
        1 for c in run.upstream_calls.get(upstream, []) if any(p.start <= c["t"] < p.end for p in outages)
    )


def recovery_rate(run: Run) -> tuple[float | None, int]:
    """(rate, calls hit by a fault): see the module's definition."""
    faulted = 0
    saved = 0
    # call ids that met at least one failed attempt, per upstream (indexed once: logs are long)
    failed_ids = {name: {c["id"] for c in calls if not c["ok"]} for name, calls in run.upstream_calls.items()}
    for call in run.agent_calls:
        upstream = run.upstream_of[call["service"]]
        hit = (
            not call["ok"] or call.get("served_by") in STAND_INS or call["id"] in failed_ids.get(upstream, ())
        )
        if hit:
            faulted += 1
            saved += 1 if call["ok"] else 0
    return (saved / faulted if faulted else None), faulted


def lost_by_error(run: Run) -> dict[str, int]:
    """The calls that ended in an error, by error (the recoveries that failed)."""
    lost: dict[str, int] = {}
    for call in run.agent_calls:
        if not call["ok"]:
            error = str(call.get("error"))
            lost[error] = lost.get(error, 0) + 1
    return lost


def reload_success(run: Run) -> tuple[float | None, float | None]:
    """(share of config changes every agent enforced, seconds the slowest agent took)."""
    if not run.config_changes:
        return None, None
    applied = 0
    slowest: list[float] = []
    for made, seen in run.config_changes:
        if seen and all(t is not None for t in seen.values()):
            applied += 1
            slowest.append(max(t for t in seen.values() if t is not None) - made)
    return applied / len(run.config_changes), (max(slowest) if slowest else None)
