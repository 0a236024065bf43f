"""What a scenario run recorded, for the KPIs (server/kpis.py): the upstreams' schedules
(phases), their call logs, the agents' call results and the breaker transitions; and the
few judgements every KPI shares (an upstream's mode at a moment, a call stopped by the
protection).
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


def mode_at(phases: Iterable[Phase], upstream: str, t: float) -> str:
    """What ``upstream``'s schedule had it do at ``t`` ("ok" outside every phase)."""
    for phase in phases:
        if phase.upstream == upstream and phase.start <= t < phase.end:
            return phase.mode
    return "ok"


def stopped(call: dict[str, Any]) -> bool:
    """The protection stopped the call: refused, or served by a stand-in."""
    return call.get("error") in REFUSALS or call.get("served_by") in STAND_INS


def failing_during(phases: Iterable[Phase], upstream: str, start: float, end: float) -> bool:
    """The upstream's schedule had it not ok at some moment of [start, end]."""
    return any(p.upstream == upstream and p.mode != "ok" and p.start <= end and p.end > start for p in phases)
