"""The seed's KPIs, computed from what actually happened in a scenario run: the upstream
servers' call logs, the agents' call results, the breaker transitions and config changes.
Whether an upstream was healthy is judged by its own schedule (the run's phases), never by
what a breaker could know.

Definitions (all shares are of calls, by call id):

* **time to detection**: from the first failed upstream call of the first outage (in
  time) to the first OPEN of that service's breaker after it (the control plane's decision
  is fleet-wide); a breaker that never opened after it is a miss (``inf``, "never").
* **recovery rate** (the seed's "successful automatic recoveries"): of the calls hit by a
  fault — a failed attempt at the upstream, a refusal (breaker, limit, quota, a full spool),
  any error, or an answer from a stand-in (the fallback, the write spool) — the share that
  still ended well for the caller (a retry, the fallback, a spooled write made later).
  Nothing hit is left out: a call refused and lost counts as a recovery that failed.
* **breaker efficiency**: of the calls made to a service during its hard outage, the share
  the breaker stopped before they reached the failing upstream.
* **false-positive rate** (the seed's "incorrectly flagged errors"): of the judgements the
  protection made while an upstream was healthy by its schedule — each call made to it, and
  each OPEN of its breaker after it had been healthy for over :data:`SLACK` — the share
  that flagged it wrongly: the calls stopped anyway (refused, or sent to a stand-in) and
  those OPENs. Each false OPEN is in the base as well as among the false positives, so the
  rate never passes 100 %.
  Nothing else is excused: a call kept off a recovered upstream while the breaker's wait
  runs is a false positive, and is also counted apart (``false_positives_in_wait``: the
  part no breaker that learns by probing could avoid) so the figure can be read.
* **reload success**: config changes enforced by every agent, per change made, and how long
  the slowest agent took.
"""

from __future__ import annotations

import math
from typing import Any

from .kpis_false import (
    false_opens,
    false_positive_rate,
    false_positives_by_service,
    false_positives_in_wait,
    kept_off_after,
    opens,
)
from .kpis_outage import (
    breaker_efficiency,
    lost_by_error,
    outage_attempts,
    outage_calls,
    recovery_rate,
    reload_success,
    time_to_detection,
)
from .kpis_record import REFUSALS, SLACK, STAND_INS, Phase, Run

__all__ = [
    "GOALS",
    "REFUSALS",
    "SLACK",
    "STAND_INS",
    "TARGETS",
    "Phase",
    "Run",
    "breaker_efficiency",
    "compute",
    "false_opens",
    "false_positive_rate",
    "false_positives_by_service",
    "false_positives_in_wait",
    "kept_off_after",
    "lost_by_error",
    "opens",
    "outage_attempts",
    "outage_calls",
    "recovery_rate",
    "reload_success",
    "time_to_detection",
    "verdicts",
]

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


def compute(run: Run, outage_service: str) -> dict[str, Any]:
    """Every KPI of ``run`` (and the counts they come from), the outage's judged on
    ``outage_service``."""
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
        shown = (
            "n/a" if value is None
            else "never" if value == math.inf
            else f"{value:.3f}" if name.endswith("_s")
            else f"{value:.{digits}%}"
        )  # fmt: skip
        rows.append((name, shown, *_verdict(name, value, TARGETS[name]), *_verdict(name, value, GOALS[name])))
    return rows


def _verdict(name: str, value: float | None, bound: tuple[str, float]) -> tuple[str, str]:
    op, target = bound
    shown = f"{op} {target:g} s" if name.endswith("_s") else f"{op} {target:.1%}".replace(".0%", "%")
    if value is None:
        return shown, "-"
    met = {"<": value < target, "<=": value <= target, ">": value > target, ">=": value >= target}[op]
    return shown, "yes" if met else "NO"
