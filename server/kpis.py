"""The seed's KPIs, computed from what actually happened in a scenario run: the upstream
servers' call logs, the agents' call results, the breaker transitions and config changes.
Whether an upstream was healthy is judged by its own schedule (the run's phases), never by
what a breaker could know.

Definitions (all shares are of calls, by call id):

* **time to detection**: from the first failed upstream call of an outage to the first
  OPEN of that service's breaker after it (the control plane's decision is fleet-wide).
* **recovery rate** (the seed's "successful automatic recoveries"): of the calls hit by a
  fault — a failed attempt at the upstream, a refusal (breaker, limit, quota, a full spool),
  any error, or an answer from a stand-in (the fallback, the write spool) — the share that
  still ended well for the caller (a retry, the fallback, a spooled write made later).
  Nothing hit is left out: a call refused and lost counts as a recovery that failed.
* **breaker efficiency**: of the calls made to a service during its hard outage, the share
  the breaker stopped before they reached the failing upstream.
* **false-positive rate** (the seed's "incorrectly flagged errors"): of the calls made while
  their upstream was healthy by its schedule, the share stopped anyway (refused, or sent to
  a stand-in), plus each OPEN while the upstream had been healthy for over :data:`SLACK`.
  Nothing else is excused: a call kept off a recovered upstream while the breaker's wait
  runs is a false positive, and is also counted apart (``false_positives_in_wait``: the
  part no breaker that learns by probing could avoid) so the figure can be read.
* **reload success**: config changes enforced by every agent, per change made, and how long
  the slowest agent took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Seconds an OPEN may follow its upstream's last failure and still be judged as caused by
#: it (the failures it counted, the control plane's decision and the watcher's lag).
SLACK = 1.0
#: Errors that mean the protection stopped the call before the upstream could answer it.
REFUSALS = frozenset({"CircuitBreakerOpen", "ResourceExhausted"})
#: What served a call in its upstream's place.
STAND_INS = frozenset({"fallback", "spool"})

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
    #: service -> the breaker's first wait, seconds
    wait_of: dict[str, float]
    #: list of (wall time made, {agent: wall time enforced or None})
    config_changes: list[tuple[float, dict[str, float | None]]] = field(default_factory=list)
    #: service -> its policy's open_wait(previous wait or None): the wait of each OPEN
    open_wait: dict[str, Callable[[float | None], float]] = field(default_factory=dict)


def _mode_at(phases: Iterable[Phase], upstream: str, t: float) -> str:
    for phase in phases:
        if phase.upstream == upstream and phase.start <= t < phase.end:
            return phase.mode
    return "ok"


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


def outage_attempts(run: Run, service: str) -> int:
    """Attempts the failing upstream received during ``service``'s hard outages (retries
    and probes included): over :func:`outage_calls`, the demo's retry amplification."""
    upstream = run.upstream_of[service]
    outages = [p for p in run.phases if p.upstream == upstream and p.mode == "fail"]
    return sum(
        1 for c in run.upstream_calls.get(upstream, []) if any(p.start <= c["t"] < p.end for p in outages)
    )


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
    return call.get("error") in REFUSALS or call.get("served_by") in STAND_INS


def _failing_during(phases: Iterable[Phase], upstream: str, start: float, end: float) -> bool:
    """The upstream's schedule had it not ok at some moment of [start, end]."""
    return any(p.upstream == upstream and p.mode != "ok" and p.start <= end and p.end > start for p in phases)


def false_opens(run: Run) -> list[tuple[float, str]]:
    """Each OPEN of a breaker whose upstream had been healthy for over :data:`SLACK`."""
    return [
        (t, name)
        for t, name, state in run.transitions
        if name in run.upstream_of
        and state == "OPEN"
        and not _failing_during(run.phases, run.upstream_of[name], t - SLACK, t)
    ]


def false_positive_rate(run: Run) -> tuple[float | None, int, int]:
    """(rate, false positives, calls made to a healthy upstream): see the module's
    definition. Only the upstream's schedule excuses a stopped call."""
    healthy = false = 0
    for call in run.agent_calls:
        if _mode_at(run.phases, run.upstream_of[call["service"]], call["t"]) != "ok":
            continue
        healthy += 1
        false += 1 if _stopped(call) else 0
    false += len(false_opens(run))
    return (false / healthy if healthy else None), false, healthy


def false_positives_by_service(run: Run) -> dict[str, int]:
    """The false positives of each service (its stopped healthy calls and false OPENs)."""
    counts = dict.fromkeys(run.upstream_of, 0)
    for call in run.agent_calls:
        if _stopped(call) and _mode_at(run.phases, run.upstream_of[call["service"]], call["t"]) == "ok":
            counts[call["service"]] += 1
    for _, name in false_opens(run):
        counts[name] += 1
    return counts


def false_positives_in_wait(run: Run) -> int:
    """Of the false positives, the calls stopped within the wait of an OPEN that an outage
    caused (opened while its upstream failed, or within :data:`SLACK` of it): the breaker
    could only learn of the recovery at its next probe. Not excused: shown apart."""
    count = 0
    for service, upstream in run.upstream_of.items():
        caused = [
            (opened, wait, ended)
            for opened, wait, ended in opens(run, service)
            if _failing_during(run.phases, upstream, opened - SLACK, opened)
        ]
        for call in run.agent_calls:
            if call["service"] != service or not _stopped(call):
                continue
            if _mode_at(run.phases, upstream, call["t"]) != "ok":
                continue
            open_ = _in_force(caused, call["t"])
            count += 1 if open_ is not None and call["t"] < open_[0] + open_[1] + SLACK else 0
    return count


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
    reload, reload_s = reload_success(run)
    outage = outage_calls(run, outage_service)
    return {
        "time_to_detection_s": time_to_detection(run, outage_service),
        "recovery_rate": recovery,
        "faulted_calls": faulted,
        "lost_by_error": lost_by_error(run),
        "breaker_efficiency": breaker_efficiency(run, outage_service),
        "outage_calls": outage[0],
        "outage_calls_reached": outage[1],
        "outage_attempts": outage_attempts(run, outage_service),
        "kept_off_after_outage": kept_off_after(run, outage_service),
        "false_positive_rate": false_rate,
        "false_positives": false,
        "healthy_calls": healthy,
        "false_positives_in_wait": false_positives_in_wait(run),
        "false_opens": len(false_opens(run)),
        "false_positives_by_service": false_positives_by_service(run),
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
