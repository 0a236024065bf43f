"""The seed's KPIs, computed from what actually happened in a scenario run: the upstream
servers' call logs, the agents' call results, the breaker transitions and config changes.

Definitions (all shares are of calls, by call id):

* **time to detection**: from the first failed upstream call of an outage to the first
  OPEN of that service's breaker after it (the control plane's decision is fleet-wide).
* **recovery rate**: of the calls hit by a fault that something could have saved (a
  backup service, or a retry while the service only failed sometimes), the share that
  still succeeded (retry, fallback, probe). Calls into a service that failed every attempt
  with no fallback (e.g. every attempt too slow) could not have been saved and are left out.
* **breaker efficiency**: of the calls made to a service during its hard outage, the share
  the breaker stopped before they reached the failing upstream.
* **false-positive rate**: breaker opens and calls stopped while the upstream was healthy
  and no breaker could still be waiting to learn it, per call made to a healthy upstream.
  The grace is the wait actually in force for that breaker then, from the run's breaker
  transitions: a breaker OPEN since ``t_o`` with wait ``W`` (its policy's ``open_wait``:
  the first wait when it opened from CLOSED, the previous one times the multiplier when a
  probe failed) cannot know before ``t_o + W``; a call is healthy once the upstream has
  been ok for :data:`SLACK` and the OPEN in force (if any) is ``W + SLACK`` old. The older
  definition (the grace is the policy's first wait, whatever the breaker's wait was) is
  computed beside it, as is the number of calls kept off the upstream after it recovered.
* **reload success**: config changes enforced by every agent, per change made, and how long
  the slowest agent took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Seconds allowed beyond a breaker's wait (a probe's round trip, the watcher's lag).
SLACK = 1.0

#: The seed's targets (its KPI list).
TARGETS = {
    "time_to_detection_s": ("<", 5.0),
    "recovery_rate": (">", 0.90),
    "breaker_efficiency": (">", 0.95),
    "false_positive_rate": ("<", 0.01),
    "reload_success": (">", 0.99),
}
#: The project's goals for the default policies (README, "The seed's KPIs, measured").
GOALS = {
    "time_to_detection_s": ("<", 5.0),
    "recovery_rate": (">=", 0.95),
    "breaker_efficiency": (">=", 0.99),
    "false_positive_rate": ("<=", 0.001),
    "reload_success": (">", 0.99),
}


@dataclass(frozen=True)
class Phase:
    """What an upstream does in a time window (wall seconds): ok, fail, slow or flap."""

    upstream: str
    start: float
    end: float
    mode: str


@dataclass
class Run:
    """Everything a scenario recorded."""

    phases: Sequence[Phase]
    #: upstream name -> list of {"t", "id", "ok"}
    upstream_calls: dict[str, list[dict[str, Any]]]
    #: list of {"t", "service", "id", "ok", "error", "served_by"}
    agent_calls: list[dict[str, Any]]
    #: list of (wall time, breaker name, new state name)
    transitions: list[tuple[float, str, str]]
    #: service -> upstream name serving it
    upstream_of: dict[str, str]
    #: service -> the breaker's first wait, seconds (the older false-positive grace)
    wait_of: dict[str, float]
    #: service -> a fallback service exists
    has_fallback: dict[str, bool]
    #: list of (wall time made, {agent: wall time enforced or None})
    config_changes: list[tuple[float, dict[str, float | None]]] = field(default_factory=list)
    #: service -> its policy's open_wait(previous wait or None): the wait of each OPEN
    open_wait: dict[str, Callable[[float | None], float]] = field(default_factory=dict)


def _mode_at(phases: Iterable[Phase], upstream: str, t: float) -> str:
    for phase in phases:
        if phase.upstream == upstream and phase.start <= t < phase.end:
            return phase.mode
    return "ok"


def _healthy_since(phases: Sequence[Phase], upstream: str, t: float) -> float:
    """How long the upstream has been ok at ``t`` (0 when it is not ok)."""
    if _mode_at(phases, upstream, t) != "ok":
        return 0.0
    ends = [p.end for p in phases if p.upstream == upstream and p.mode != "ok" and p.end <= t]
    return t - max(ends) if ends else float("inf")


def time_to_detection(run: Run, service: str) -> float | None:
    upstream = run.upstream_of[service]
    outages = [p for p in run.phases if p.upstream == upstream and p.mode == "fail"]
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
    return min(opens) - first if opens else None


def breaker_efficiency(run: Run, service: str) -> float | None:
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


def kept_off_after(run: Run, service: str) -> int:
    """Calls to ``service`` stopped by its breaker (refused, or sent to a fallback) after its
    last outage ended, while the upstream served: the price of the breaker's waits (it
    learns of the recovery only at its next probe). Not a KPI; shown with them."""
    upstream = run.upstream_of[service]
    ends = [p.end for p in run.phases if p.upstream == upstream and p.mode == "fail"]
    if not ends:
        return 0
    return sum(
        1
        for c in run.agent_calls
        if c["service"] == service
        and c["t"] >= max(ends)
        and _mode_at(run.phases, upstream, c["t"]) == "ok"
        and _stopped(c)
    )


def recovery_rate(run: Run) -> tuple[float | None, int]:
    faulted = 0
    saved = 0
    # call ids that met at least one failed attempt, per upstream (indexed once: logs are long)
    failed_ids = {name: {c["id"] for c in calls if not c["ok"]} for name, calls in run.upstream_calls.items()}
    for call in run.agent_calls:
        upstream = run.upstream_of[call["service"]]
        hit = call["id"] in failed_ids.get(upstream, ()) or call.get("served_by") == "fallback"
        if not hit and call["ok"]:
            continue
        if not hit and call.get("error") not in (
            "OperationTimeout",
            "StorageFailure",
            "LLMProviderUnavailable",
        ):
            continue  # failed for a reason that is not a fault of the service
        mode = _mode_at(run.phases, upstream, call["t"])
        savable = run.has_fallback.get(call["service"], False) or mode == "flap"
        if not savable:
            continue
        faulted += 1
        saved += 1 if call["ok"] else 0
    return (saved / faulted if faulted else None), faulted


def opens(run: Run, service: str) -> list[tuple[float, float, float]]:
    """Each OPEN episode of ``service``'s breaker: (opened at, its wait, closed at or inf),
    the wait worked out as the breaker does (a reopen after HALF_OPEN grows it)."""
    wait_of = run.open_wait.get(service) or (lambda _previous: run.wait_of.get(service, 0.0))
    episodes: list[tuple[float, float, float]] = []
    state, wait = "CLOSED", 0.0
    for t, name, new in sorted(run.transitions):
        if name != service:
            continue
        if new == "OPEN":
            wait = wait_of(wait if state == "HALF_OPEN" else None)
            if episodes and episodes[-1][2] == float("inf"):
                episodes[-1] = (*episodes[-1][:2], t)  # the reopen ends the previous wait
            episodes.append((t, wait, float("inf")))
        elif new == "CLOSED" and episodes and episodes[-1][2] == float("inf"):
            episodes[-1] = (*episodes[-1][:2], t)
        state = new
    return episodes


def _in_force(episodes: Sequence[tuple[float, float, float]], t: float) -> tuple[float, float] | None:
    """The OPEN (opened at, wait) in force at ``t``, if the breaker was not CLOSED then."""
    for opened, wait, ended in reversed(episodes):
        if opened <= t:
            return (opened, wait) if t < ended else None
    return None


def _stopped(call: dict[str, Any]) -> bool:
    return call.get("error") == "CircuitBreakerOpen" or call.get("served_by") == "fallback"


def false_positive_rate(run: Run) -> tuple[float | None, int, int]:
    """(rate, false positives, healthy calls) with the grace the wait in force."""
    episodes = {service: opens(run, service) for service in run.upstream_of}

    def excused(service: str, t: float) -> bool:
        upstream = run.upstream_of[service]
        if _healthy_since(run.phases, upstream, t) <= SLACK:
            return True
        open_ = _in_force(episodes[service], t)
        return open_ is not None and t < open_[0] + open_[1] + SLACK

    return _false_positives(run, excused)


def false_positive_rate_first_wait(run: Run) -> tuple[float | None, int, int]:
    """The older definition: the grace is the policy's first wait, whatever the breaker's."""

    def excused(service: str, t: float) -> bool:
        healthy = _healthy_since(run.phases, run.upstream_of[service], t)
        return healthy <= run.wait_of.get(service, 0.0) + SLACK

    return _false_positives(run, excused)


def _false_positives(run: Run, excused: Callable[[str, float], bool]) -> tuple[float | None, int, int]:
    healthy_calls = 0
    false = 0
    for call in run.agent_calls:
        if excused(call["service"], call["t"]):
            continue
        healthy_calls += 1
        false += 1 if _stopped(call) else 0
    for t, name, state in run.transitions:
        if name in run.upstream_of and state == "OPEN" and not excused(name, t - 1e-6):
            false += 1
    return (false / healthy_calls if healthy_calls else None), false, healthy_calls


def reload_success(run: Run) -> tuple[float | None, float | None]:
    if not run.config_changes:
        return None, None
    applied = 0
    slowest: list[float] = []
    for made, seen in run.config_changes:
        if seen and all(t is not None for t in seen.values()):
            applied += 1
            slowest.append(max(t for t in seen.values() if t is not None) - made)
    return applied / len(run.config_changes), (max(slowest) if slowest else None)


def compute(run: Run, outage_service: str) -> dict[str, Any]:
    recovery, faulted = recovery_rate(run)
    false_rate, false, healthy = false_positive_rate(run)
    first_rate, first_false, first_healthy = false_positive_rate_first_wait(run)
    reload, reload_s = reload_success(run)
    outage = outage_calls(run, outage_service)
    return {
        "time_to_detection_s": time_to_detection(run, outage_service),
        "recovery_rate": recovery,
        "faulted_calls": faulted,
        "breaker_efficiency": breaker_efficiency(run, outage_service),
        "outage_calls": outage[0],
        "outage_calls_reached": outage[1],
        "kept_off_after_outage": kept_off_after(run, outage_service),
        "false_positive_rate": false_rate,
        "false_positives": false,
        "healthy_calls": healthy,
        "false_positive_rate_first_wait": first_rate,
        "false_positives_first_wait": first_false,
        "healthy_calls_first_wait": first_healthy,
        "reload_success": reload,
        "reload_seconds": reload_s,
        "calls": len(run.agent_calls),
    }


def verdicts(kpis: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(KPI, value, seed target, met?, goal, met?) rows for the table."""
    rows = []
    for name in TARGETS:
        value = kpis.get(name)
        digits = 2 if name == "false_positive_rate" else 1  # its goal is 0.1 %
        shown = "n/a" if value is None else f"{value:.3f}" if name.endswith("_s") else f"{value:.{digits}%}"
        rows.append((name, shown, *_verdict(name, value, TARGETS[name]), *_verdict(name, value, GOALS[name])))
    return rows


def _verdict(name: str, value: float | None, bound: tuple[str, float]) -> tuple[str, str]:
    op, target = bound
    shown = f"{op} {target:g} s" if name.endswith("_s") else f"{op} {target:.1%}".replace(".0%", "%")
    if value is None:
        return shown, "-"
    met = {"<": value < target, "<=": value <= target, ">": value > target, ">=": value >= target}[op]
    return shown, "yes" if met else "NO"
