"""``/metrics`` in Prometheus' text format: the seed's ErrorMetrics and the fleet's state.

Read from the control plane at scrape time (a custom collector), so there is no second set of
counters to keep in step. Names follow Prometheus' conventions (``_total`` for counters, ratios
in 0..1, seconds); the seed's ErrorStatistics fields map one to one:

* total_errors: ``mission_control_errors_total``
* errors_by_service, _by_agent, _by_type: ``mission_control_errors_by_service_total{service}``,
  ``…_by_agent_total{agent}``, ``…_by_type_total{error_type}``
* circuit_breaker_opens: ``mission_control_circuit_breaker_opens_total``
* recovery_attempts, recovery_successes: ``mission_control_recovery_attempts_total``,
  ``mission_control_recovery_successes_total``
* recovery_success_rate: ``mission_control_recovery_success_ratio`` (0..1)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .fleet_view import STATE_NAMES

if TYPE_CHECKING:
    from .control_plane import ControlPlane

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "mission_control_"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_P + name, doc, value=value)


def _by(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(_P + name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class FleetCollector(Collector):
    """Collects the control plane's figures on every scrape."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        yield from self._errors()
        yield from self._breakers()
        yield from self._fleet()

    def _errors(self) -> Iterator[Metric]:
        plane = self.plane
        s = plane.stats.to_proto(plane.policies, plane.hub.connected_agents)
        yield _counter("errors", "failed calls reported by agents", s.total_errors)
        yield _by("errors_by_service", "failed calls by service", "service", dict(s.errors_by_service))
        yield _by("errors_by_agent", "failed calls by agent", "agent", dict(s.errors_by_agent))
        yield _by("errors_by_type", "failed calls by error type", "error_type", dict(s.errors_by_type))
        yield _counter("circuit_breaker_opens", "breaker transitions to OPEN", s.circuit_breaker_opens)
        yield _counter("recovery_attempts", "failed calls retried or sent to a fallback", s.recovery_attempts)
        yield _counter("recovery_successes", "recovery attempts that succeeded", s.recovery_successes)
        ratio = s.recovery_successes / s.recovery_attempts if s.recovery_attempts else 1.0
        yield GaugeMetricFamily(_P + "recovery_success_ratio", "recoveries that succeeded, 0..1", ratio)
        yield _counter("calls_rejected", "calls stopped before reaching the service", s.calls_rejected)
        yield _by(
            "calls_rejected_by_reason", "calls stopped, by the gate", "reason", dict(s.rejected_by_reason)
        )
        yield _counter(
            "rejections_capped",
            "calls stopped locally that agents reported beyond what a report may count",
            sum(plane.reports.rejections_capped.values()),
        )
        fallbacks = CounterMetricFamily(_P + "fallbacks", "fallback attempts", labels=["result"])
        fallbacks.add_metric(["served"], s.fallbacks_served)
        fallbacks.add_metric(["failed"], s.fallbacks_failed)
        yield fallbacks
        yield _counter("outcomes_dropped", "outcome batches agents could not deliver", s.outcomes_dropped)
        reloads = CounterMetricFamily(_P + "config_reloads", "policy values loaded", labels=["result"])
        reloads.add_metric(["ok"], s.config_reloads_ok)
        reloads.add_metric(["failed"], s.config_reloads_failed)
        yield reloads

    def _breakers(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            _P + "breaker_state", "1 for the breaker's current state", labels=["breaker", "state"]
        )
        failures = GaugeMetricFamily(
            _P + "breaker_consecutive_failures", "failures toward the trip", labels=["breaker"]
        )
        remaining = GaugeMetricFamily(
            _P + "breaker_open_remaining_seconds", "time left OPEN", labels=["breaker"]
        )
        for b in self.plane.breakers.snapshot():
            current = STATE_NAMES.get(b.state, "UNSPECIFIED")
            for name in STATE_NAMES.values():
                state.add_metric([b.name, name], 1.0 if name == current else 0.0)
            failures.add_metric([b.name], b.consecutive_failures)
            remaining.add_metric([b.name], b.open_remaining.ToMilliseconds() / 1000)
        yield from (state, failures, remaining)

    def _fleet(self) -> Iterator[Metric]:
        plane = self.plane
        yield GaugeMetricFamily(
            _P + "agents_connected", "agents with a Connect stream", plane.hub.connected_agents
        )
        yield GaugeMetricFamily(_P + "leader", "1 while this replica decides transitions", int(plane.leading))
        yield from self._roster()
        yield GaugeMetricFamily(_P + "store_up", "1 while etcd is reachable", int(plane.store_ok))
        names = ("units", "leased", "demanded", "used")
        families = {
            n: GaugeMetricFamily(
                _P + f"fleet_limit_{n}", f"fleet limit {n} in the last period", labels=["service", "resource"]
            )
            for n in names
        }
        for usage in plane.capacity.usage():
            key = [usage.service, usage.resource]
            families["units"].add_metric(key, usage.fleet_units)
            families["leased"].add_metric(key, usage.leased)
            families["demanded"].add_metric(key, usage.demanded)
            families["used"].add_metric(key, usage.used)
        yield from families.values()

    def _roster(self) -> Iterator[Metric]:
        roster = self.plane.roster
        if roster is None:
            return
        per_replica = GaugeMetricFamily(
            _P + "fleet_agents", "agents connected to each replica (as published)", labels=["replica"]
        )
        counts = roster.per_replica()
        own = {s.agent_id for s in list(self.plane.hub.agents.values()) if not s.replica}
        counts[self.plane.instance_id] = len(own)  # fresher than what this replica published
        for replica in sorted(counts):
            per_replica.add_metric([replica], counts[replica])
        yield per_replica
        yield _counter("roster_malformed", "roster values ignored as malformed", roster.malformed)


def registry_for(plane: ControlPlane) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(plane))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
