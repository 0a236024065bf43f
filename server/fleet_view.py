"""What the dashboard and ``/metrics`` show: a read-only picture of the fleet, as plain data.

Built from the control plane's parts on request; nothing here changes fleet state. Per-agent
activity is tallied from the same outcome summaries the breakers are fed, bounded in the
number of agents and services it keeps.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .json_values import json_values
from .roster_publish import connected_agents

if TYPE_CHECKING:
    from .control_plane import ControlPlane

STATE_NAMES = {value: name.removeprefix("BREAKER_STATE_") for name, value in pb.BreakerState.items() if value}
#: Most (agent, service) pairs tallied, and transitions remembered, by one replica.
MAX_ACTIVITY_ROWS = 20_000
MAX_TIMELINE = 200
#: Agents listed in one picture (this replica's first; the rest are counted): a page and an
#: event stream stay bounded however large the fleet.
MAX_AGENT_ROWS = 2_000
#: Error types kept per row (the taxonomy has seven; the rest are counted as "other").
MAX_ERROR_TYPES = 16


@dataclass
class Activity:
    """Calls one agent made to one service, as its summaries reported them."""

    calls: int = 0
    failures: int = 0
    rejected: int = 0
    fallbacks_served: int = 0
    fallbacks_failed: int = 0
    slow_calls: int = 0
    recovery_attempts: int = 0
    recovery_successes: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    last_seen: float = 0.0

    def add(self, summary: pb.OutcomeSummary, now: float) -> None:
        failures = summary.failures + summary.probe_failures
        self.calls += summary.successes + summary.probe_successes + failures
        self.failures += failures
        self.rejected += summary.rejected
        self.rejected_by_reason.update(dict(summary.rejected_by_reason))  # four gates at most
        self.fallbacks_served += summary.fallbacks_served
        self.fallbacks_failed += summary.fallbacks_failed
        self.slow_calls += summary.slow_calls
        self.recovery_attempts += summary.recovery_attempts
        self.recovery_successes += min(summary.recovery_successes, summary.recovery_attempts)
        self.count_errors(summary.errors_by_type.items())
        self.last_seen = now

    def count_errors(self, counts: Any) -> None:
        for name, count in counts:
            if name in self.errors_by_type or len(self.errors_by_type) < MAX_ERROR_TYPES:
                self.errors_by_type[name] += count
            else:  # an agent inventing names fills one bucket, not the dashboard's memory
                self.errors_by_type["other"] += count

    def as_dict(self) -> dict[str, Any]:
        rate = self.recovery_successes / self.recovery_attempts if self.recovery_attempts else None
        return {
            "calls": self.calls,
            "failures": self.failures,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "fallbacks_served": self.fallbacks_served,
            "fallbacks_failed": self.fallbacks_failed,
            "slow_calls": self.slow_calls,
            "recovery_attempts": self.recovery_attempts,
            "recovery_rate": rate,
            "errors_by_type": dict(self.errors_by_type),
        }


class FleetActivity:
    """Per (agent, service) tallies; the least recently seen pair goes first when full."""

    def __init__(self, max_rows: int = MAX_ACTIVITY_ROWS, clock: Any = time.monotonic) -> None:
        self.rows: dict[tuple[str, str], Activity] = {}
        self.max_rows = max_rows
        self._clock = clock

    def record(self, agent: str, summary: pb.OutcomeSummary) -> None:
        key = (agent, summary.service)
        row = self.rows.pop(key, None) or Activity()
        row.add(summary, self._clock())
        self.rows[key] = row  # most recent last
        while len(self.rows) > self.max_rows:
            del self.rows[next(iter(self.rows))]

    def by(self, index: int) -> dict[str, dict[str, Any]]:
        """Totals per agent (index 0) or per service (index 1)."""
        totals: dict[str, Activity] = {}
        for key, row in self.rows.items():
            total = totals.setdefault(key[index], Activity())
            total.calls += row.calls
            total.failures += row.failures
            total.rejected += row.rejected
            total.rejected_by_reason.update(row.rejected_by_reason)
            total.fallbacks_served += row.fallbacks_served
            total.fallbacks_failed += row.fallbacks_failed
            total.slow_calls += row.slow_calls
            total.recovery_attempts += row.recovery_attempts
            total.recovery_successes += row.recovery_successes
            total.count_errors(row.errors_by_type.items())
        return {name: totals[name].as_dict() for name in sorted(totals)}


class Timeline:
    """The latest breaker transitions, newest first."""

    def __init__(self, size: int = MAX_TIMELINE) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, breaker: pb.Breaker, old: int | None) -> None:
        self.entries.appendleft(
            {
                "at": breaker.changed_at.ToMilliseconds() / 1000 if breaker.HasField("changed_at") else None,
                "breaker": breaker.name,
                "from": STATE_NAMES.get(old or 0, ""),
                "to": STATE_NAMES.get(breaker.state, ""),
                "reason": breaker.reason,
            }
        )


def breaker_row(plane: ControlPlane, message: pb.Breaker, now: float) -> dict[str, Any]:
    found = plane.breakers.find(message.name)
    return {
        "name": message.name,
        "state": STATE_NAMES.get(message.state, "UNSPECIFIED"),
        "consecutive_failures": message.consecutive_failures,
        "failures": message.failures,
        "open_remaining": message.open_remaining.ToMilliseconds() / 1000,
        "permits_out": found.permits_out(now) if found is not None else 0,
        "half_open_successes": message.half_open_successes,
        "changed_at": message.changed_at.ToMilliseconds() / 1000 if message.HasField("changed_at") else None,
        "reason": message.reason,
        "generation": message.generation,
        "stored": message.revision > 0,
    }


def _policy(policy: ServicePolicy) -> dict[str, Any]:
    from mission_control.client.config import policy_to_proto

    return json_format.MessageToDict(policy_to_proto(policy), preserving_proto_field_name=True)


def _shadow_row(row: pb.ShadowServiceStatistics) -> dict[str, Any]:
    shown = json_values(row)
    shown["breaker_state"] = STATE_NAMES.get(row.breaker_state, "CLOSED")
    shown["shadow_breaker_state"] = STATE_NAMES.get(row.shadow_breaker_state, "CLOSED")
    return shown


def fleet_state(plane: ControlPlane, activity: FleetActivity, timeline: Timeline) -> dict[str, Any]:
    """Everything the dashboard shows, as JSON-ready data."""
    now = time.monotonic()
    stats = plane.stats.to_proto(plane.policies, plane.hub.connected_agents, plane.capacity.usage())
    plane.ledger_stats(stats)
    leadership = plane.leadership
    agents, replicas = fleet_agents(plane)
    listed = agents[:MAX_AGENT_ROWS]
    return {
        "instance": plane.instance_id,
        "leading": plane.leading,
        "leader": None if leadership is None else (leadership.leader_id or None),
        "store_ok": plane.store_ok,
        "breakers": [breaker_row(plane, b, now) for b in plane.breakers.snapshot()],
        "statistics": json_values(stats),
        "by_service": activity.by(1),
        "by_agent": _bounded(activity.by(0), listed),
        "policies": [_policy(p) for p in plane.policies.all()],
        "shadow": [_shadow_row(row) for row in plane.trials.to_proto()],
        "shadow_policies": [_policy(p) for p in plane.shadows.all()],
        "agents": listed,
        "agents_total": len(agents),
        "replicas": replicas,
        "roster_malformed": plane.roster.malformed if plane.roster is not None else 0,
        "roster_problem": plane.roster.problem if plane.roster is not None else "",
        "timeline": list(timeline.entries),
    }


def _bounded(by_agent: dict[str, Any], listed: list[dict[str, Any]]) -> dict[str, Any]:
    """The listed agents' activity, then others' (gone from every replica) up to the bound."""
    names = [row["id"] for row in listed if row["id"] in by_agent]
    seen = set(names)
    names += [name for name in by_agent if name not in seen][: max(0, MAX_AGENT_ROWS - len(names))]
    return {name: by_agent[name] for name in names}


def fleet_agents(plane: ControlPlane) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every agent of the fleet with the replica it is connected to — this replica's own
    from its streams, the others' from the roster in etcd — and the replicas with their
    agent counts."""
    me = plane.instance_id
    mine = connected_agents(plane.hub, me, {})
    rows = [a.as_dict(me) for a in mine]
    relays = sorted({sub.agent_id for sub in list(plane.hub.agents.values()) if sub.replica})
    # a follower's relay to this leader: shown as a link, it is no agent
    rows += [{"id": r, "replica": me, "this_replica": True, "relay": True, "streams": 1} for r in relays]
    counts = plane.roster.per_replica() if plane.roster is not None else Counter()
    counts[me] = len(mine)
    if plane.roster is not None:
        rows += [a.as_dict(me) for a in plane.roster.agents() if a.replica != me]
    leader = plane.instance_id if plane.leading else (plane.leadership and plane.leadership.leader_id)
    replicas = [
        {"id": r, "agents": counts[r], "leader": r == leader, "this_replica": r == me} for r in sorted(counts)
    ]
    rows.sort(key=lambda row: (not row["this_replica"], row["replica"], row["id"]))
    return rows, replicas
