"""The control plane's telemetry: fleet error metrics from agents' outcome summaries,
breaker transitions as spans, policy reloads, and gauges for breaker states and agents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState, Transition
from mission_control.client.telemetry import Telemetry, _guarded
from mission_control.resilience.v1 import control_plane_pb2 as pb

if TYPE_CHECKING:
    from .engine import FleetBreakers
    from .hub import Hub
    from .stats import FleetStatistics


class FleetTelemetry:
    """Hooks the control plane calls; each is guarded and never raises."""

    def __init__(
        self, telemetry: Telemetry, breakers: FleetBreakers, hub: Hub, stats: FleetStatistics
    ) -> None:
        self.t = telemetry
        self._failed_once = False
        self.breakers = breakers
        self.hub = hub
        self.stats = stats
        telemetry.observe(
            "mission_control.breaker.state",
            "fleet breaker state (1 CLOSED, 2 OPEN, 3 HALF_OPEN, 4-6 operator)",
            self._states,
        )
        telemetry.observe(
            "mission_control.agents.connected", "agents with a Connect stream to this replica", self._agents
        )
        telemetry.observe(
            "mission_control.fleet.recovery.rate", "recovery success rate, percent", self._recovery_rate
        )

    def _states(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(b.state), {"breaker": b.name}) for b in self.breakers.snapshot()]

    def _agents(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(self.hub.connected_agents), {})]

    def _recovery_rate(self) -> list[tuple[float, dict[str, str]]]:
        s = self.stats
        rate = 100.0 * s.recovery_successes / s.recovery_attempts if s.recovery_attempts else 0.0
        return [(rate, {})]

    @_guarded
    def outcomes(self, agent: str, summary: pb.OutcomeSummary) -> None:
        t = self.t
        for error_type, n in summary.errors_by_type.items():
            t.errors.add(
                n, {"error.type": error_type, "error.service": summary.service, "error.agent": agent}
            )
        attrs = {"error.service": summary.service, "error.agent": agent}
        if summary.rejected:
            t.rejected.add(summary.rejected, attrs)
        if summary.recovery_attempts:
            t.recovery_attempts.add(summary.recovery_attempts, attrs)
        if summary.recovery_successes:
            t.recovery_successes.add(summary.recovery_successes, attrs)

    @_guarded
    def dropped(self, batches: int) -> None:
        self.t.batches_dropped.add(batches)

    @_guarded
    def transition(self, message: pb.Breaker, move: Transition) -> None:
        attrs = {
            "breaker.name": move.name,
            "breaker.old_state": move.old.name,
            "breaker.new_state": move.new.name,
            "breaker.reason": move.reason,
            "breaker.generation": int(message.generation),
        }
        with self.t.tracer.start_as_current_span("mission_control.breaker.transition", attributes=attrs):
            pass
        if move.new is BreakerState.OPEN:
            self.t.breaker_opens.add(1, {"breaker": move.name})

    @_guarded
    def reload(self, ok: bool) -> None:
        self.t.config_reloads.add(1, {"result": "ok" if ok else "failed"})
