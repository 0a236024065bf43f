"""OpenTelemetry for agents and the control plane: traces, the seed's error metrics, JSON
error logs — configured only by the standard ``OTEL_*`` variables, off by default.

Telemetry is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces/metrics variant) is
set; ``OTEL_SDK_DISABLED=true`` turns it off. Export goes over OTLP/gRPC, or OTLP/HTTP with
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` (per signal: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``,
``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``), with ``OTEL_EXPORTER_OTLP_HEADERS`` (e.g. Axiom's
``Authorization`` and ``X-Axiom-Dataset``);
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override the defaults
(``service.name``, ``service.version``, ``deployment.environment`` from
``MISSION_CONTROL_ENVIRONMENT``). ``MISSION_CONTROL_TELEMETRY_USER_ID=true`` opts in to
``user.id`` on spans (the seed: user ids only where the deployment allows them).

Nothing here may break or slow a call: every hook is guarded, failures are logged once,
and export runs on background threads.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, TypeVar

from .errors import ErrorContext, MissionControlError

__all__ = ["Telemetry", "telemetry_from_env"]

_log = logging.getLogger("mission_control.telemetry")
error_log = logging.getLogger("mission_control.errors")

F = TypeVar("F", bound=Callable[..., Any])
_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def enabled_by_env() -> bool:
    if _truthy("OTEL_SDK_DISABLED"):
        return False
    return any(os.environ.get(name) for name in _ENDPOINT_VARS)


class _Once(logging.Filter):
    """Lets the first record of a logger through, then only every 1000th."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen += 1
        return self.seen == 1 or self.seen % 1000 == 0


def _guarded(method: F) -> F:
    """A telemetry hook that can never raise into the call it observes."""

    @functools.wraps(method)
    def safe(self: Telemetry, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            if not self._failed_once:
                self._failed_once = True
                _log.exception("telemetry hook %s failed; further failures are not logged", method.__name__)
            return None

    return safe  # type: ignore[return-value]


def _version() -> str:
    try:
        return metadata.version("mission-control")
    except metadata.PackageNotFoundError:
        return "0"


class Telemetry:
    """Tracer, meter and instruments for one component ("agent" or "control-plane").

    Build it with :func:`telemetry_from_env`, or pass providers explicitly (tests).
    """

    def __init__(
        self,
        tracer_provider: Any,
        meter_provider: Any,
        *,
        component: str,
        agent: str = "",
        include_user_id: bool | None = None,
        owns_providers: bool = False,
    ) -> None:
        from opentelemetry import metrics, trace

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.component = component
        self.agent = agent
        self.include_user_id = (
            _truthy("MISSION_CONTROL_TELEMETRY_USER_ID") if include_user_id is None else include_user_id
        )
        self._owns = owns_providers
        self._stopped = False
        self._failed_once = False
        if owns_providers:
            import atexit

            atexit.register(self.shutdown)
        self._trace = trace
        self.tracer = trace.get_tracer("mission_control", _version(), tracer_provider=tracer_provider)
        meter = metrics.get_meter("mission_control", _version(), meter_provider=meter_provider)
        prefix = "mission_control" if component == "agent" else "mission_control.fleet"
        self.errors = meter.create_counter(
            f"{prefix}.errors", description="failed calls, by service, agent and error type"
        )
        self.rejected = meter.create_counter(
            f"{prefix}.calls.rejected", description="calls stopped before reaching the service"
        )
        self.retries = meter.create_counter(f"{prefix}.retries", description="retries made")
        self.recovery_attempts = meter.create_counter(
            f"{prefix}.recovery.attempts",
            description="calls that failed first and were retried or sent elsewhere",
        )
        self.recovery_successes = meter.create_counter(
            f"{prefix}.recovery.successes", description="recovery attempts that succeeded"
        )
        self.fallbacks = meter.create_counter(f"{prefix}.fallbacks", description="calls served by a fallback")
        self.breaker_opens = meter.create_counter(
            "mission_control.breaker.opens", description="breaker transitions to OPEN"
        )
        self.batches_dropped = meter.create_counter(
            "mission_control.outcome_batches.dropped", description="outcome batches that could not be kept"
        )
        self.config_reloads = meter.create_counter(
            "mission_control.config.reloads", description="policy values applied (ok) or refused (failed)"
        )
        self._meter = meter
        self._gauges: list[Any] = []

    # -- setup helpers ---------------------------------------------------------

    def observe(
        self, name: str, description: str, read: Callable[[], Iterable[tuple[float, dict[str, Any]]]]
    ) -> None:
        """An observable gauge whose values ``read`` returns at each collection."""
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> list[Any]:
            try:
                return [Observation(value, attrs) for value, attrs in read()]
            except Exception:
                _log.debug("gauge %s failed", name, exc_info=True)
                return []

        self._gauges.append(
            self._meter.create_observable_gauge(name, callbacks=[callback], description=description)
        )

    def grpc_client_interceptor(self) -> Any:
        from opentelemetry.instrumentation.grpc import client_interceptor

        return client_interceptor(tracer_provider=self.tracer_provider)

    def grpc_aio_client_interceptors(self) -> list[Any]:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(aio_client_interceptors(tracer_provider=self.tracer_provider))

    def grpc_aio_server_interceptor(self) -> Any:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return aio_server_interceptor(tracer_provider=self.tracer_provider)

    def grpc_server_interceptor(self) -> Any:
        from opentelemetry.instrumentation.grpc import server_interceptor

        return server_interceptor(tracer_provider=self.tracer_provider)

    def start_span(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        return self.tracer.start_as_current_span(name, attributes=attributes, record_exception=False)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Flush and stop exporting, once; bounded, so an unreachable collector cannot hold
        up exit. Also runs at interpreter exit."""
        if not self._owns or self._stopped:
            return
        self._stopped = True
        import threading

        def stop() -> None:
            for provider in (self.tracer_provider, self.meter_provider):
                try:
                    provider.shutdown()
                except Exception:
                    _log.debug("telemetry shutdown failed", exc_info=True)

        worker = threading.Thread(target=stop, name="mission-control-telemetry-stop", daemon=True)
        worker.start()
        worker.join(timeout)

    # -- agent-side hooks ------------------------------------------------------

    def _attributes(self, error: BaseException, service: str, operation: str) -> dict[str, Any]:
        ctx = getattr(error, "context", None) or ErrorContext(service, self.agent, operation)
        attrs: dict[str, Any] = {
            "error.type": getattr(error, "error_type", type(error).__name__),
            "error.severity": str(getattr(error, "severity", "high")),
            "error.service": ctx.service or service,
            "error.agent": ctx.agent or self.agent,
            "error.operation": ctx.operation or operation,
            "session.id": ctx.session_id,
        }
        if self.include_user_id and ctx.user_id:
            attrs["user.id"] = ctx.user_id
        return attrs

    @_guarded
    def call_failed(self, error: BaseException, service: str, operation: str) -> None:
        """A call ended with ``error``: span attributes, the error counter, one JSON log line."""
        attrs = self._attributes(error, service, operation)
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attrs)
            code = getattr(error, "grpc_code", None)
            if code is not None:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, attrs["error.type"]))
            span.record_exception(error, attributes={"error.type": attrs["error.type"]})
        self.errors.add(1, {k: attrs[k] for k in ("error.type", "error.service", "error.agent")})
        self._log_error(error, attrs, span)

    def _log_error(self, error: BaseException, attrs: dict[str, Any], span: Any) -> None:
        context = span.get_span_context()
        line = {
            "message": "Mission Control error occurred",
            "error_type": attrs["error.type"],
            "error_severity": attrs["error.severity"],
            "service": attrs["error.service"],
            "agent": attrs["error.agent"],
            "operation": attrs["error.operation"],
            "session_id": attrs["session.id"],
            "error_message": error.user_friendly_display()
            if isinstance(error, MissionControlError)
            else type(error).__name__,
            "trace_id": f"{context.trace_id:032x}" if context.is_valid else None,
            "span_id": f"{context.span_id:016x}" if context.is_valid else None,
        }
        if "user.id" in attrs:
            line["user_id"] = attrs["user.id"]
        error_log.error(json.dumps(line))

    @_guarded
    def call_rejected(self, error: MissionControlError, service: str, operation: str, reason: str) -> None:
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(
                f"mission_control.{reason}", {"error.type": error.error_type, "error.service": service}
            )
        self.rejected.add(1, {"reason": reason, "error.service": service, "error.agent": self.agent})

    @_guarded
    def retrying(self, service: str, attempt: int, delay: float, error: BaseException) -> None:
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "mission_control.retry",
                {
                    "attempt": attempt,
                    "delay_secs": delay,
                    "error.type": getattr(error, "error_type", type(error).__name__),
                },
            )
        self.retries.add(1, {"error.service": service, "error.agent": self.agent})

    @_guarded
    def fell_back(self, service: str, fallback: str, succeeded: bool) -> None:
        span = self._trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "mission_control.fallback",
                {"error.service": service, "fallback": fallback, "succeeded": succeeded},
            )
        if succeeded:
            self.fallbacks.add(1, {"error.service": service, "fallback": fallback})

    @_guarded
    def recovered(self, service: str, succeeded: bool) -> None:
        attrs = {"error.service": service, "error.agent": self.agent}
        self.recovery_attempts.add(1, attrs)
        if succeeded:
            self.recovery_successes.add(1, attrs)


_PROTOCOLS = ("grpc", "http/protobuf")


class UnsupportedProtocol(ValueError):
    """``OTEL_EXPORTER_OTLP_*PROTOCOL`` names a protocol this package cannot export with."""


def otlp_protocol(signal: str) -> str:
    """The OTLP protocol for ``signal`` ("traces" or "metrics"): the per-signal variable, then
    ``OTEL_EXPORTER_OTLP_PROTOCOL``, then ``grpc`` (this package's default since its first
    release; the specification's default is ``http/protobuf``)."""
    value = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if value not in _PROTOCOLS:
        known = ", ".join(_PROTOCOLS)
        raise UnsupportedProtocol(f"OTLP protocol {value!r} is not supported (use one of {known})")
    return value


def _exporters() -> tuple[Any, Any]:
    """The span and metric exporters the environment asks for, each reading its own variables."""
    if otlp_protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    if otlp_protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    return OTLPSpanExporter(), OTLPMetricExporter()


def _providers(component: str) -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.grpc import exporter as grpc_exporter
    from opentelemetry.exporter.otlp.proto.http import metric_exporter as http_metrics
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_traces
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # An unreachable collector must not flood the log: the first failure is enough.
    for name in (grpc_exporter.__name__, http_traces.__name__, http_metrics.__name__):
        logging.getLogger(name).addFilter(_Once())
    span_exporter, metric_exporter = _exporters()
    defaults = Resource.create(
        {
            "service.name": f"mission-control-{component}",
            "service.version": _version(),
            "deployment.environment": os.environ.get("MISSION_CONTROL_ENVIRONMENT", "development"),
        }
    )
    resource = defaults.merge(OTELResourceDetector().detect())
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    interval = int(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "10000"))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    return tracer_provider, meter_provider


def telemetry_from_env(component: str, agent: str = "") -> Telemetry | None:
    """Telemetry configured by the ``OTEL_*`` environment, or None when it is off (or
    cannot be set up — then the reason is logged once and calls go on untouched)."""
    if not enabled_by_env():
        return None
    try:
        tracer_provider, meter_provider = _providers(component)
    except UnsupportedProtocol as err:
        _log.error("telemetry is off: %s", err)
        return None
    except Exception as err:
        _log.error("telemetry is off: could not set it up (%s)", type(err).__name__)
        return None
    return Telemetry(tracer_provider, meter_provider, component=component, agent=agent, owns_providers=True)
