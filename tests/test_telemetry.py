"""Telemetry over the wire: a real OTLP/gRPC receiver, an agent, an upstream and the control
plane as separate processes, configured only by OTEL_* variables."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import ErrorContext, LLMProviderUnavailable
from mission_control.client.policy import Backoff, ServicePolicy
from mission_control.client.telemetry import Telemetry
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.otlp import HttpReceiver, Receiver
from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode

SECRET = "s3cr3t-token-4711"


def poll(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def otel_env(receiver: Receiver, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {SECRET},x-axiom-dataset=mc",
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def test_spans_metrics_and_logs_arrive_over_otlp(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], capfd: pytest.CaptureFixture[str]
) -> None:
    with Receiver() as receiver:
        plane, address = control_plane(etcd_server.endpoint, prefix, env=otel_env(receiver, "mc-plane"))
        upstream_proc = python(
            "tests.support.upstream", "llm-upstream", env=otel_env(receiver, "llm-upstream")
        )
        spawned += [plane, upstream_proc]
        upstream = f"127.0.0.1:{upstream_proc.port()}"
        with grpc.insecure_channel(address) as channel:
            pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(
                pb.PutPolicyRequest(
                    policy=policy_pb2.ServicePolicy(
                        service="llm_provider", max_retries=1, failure_threshold=2, wait_duration_secs=60,
                        backoff=policy_pb2.BackoffPolicy(initial_backoff_secs=0.01),
                    )
                ),
                timeout=10,
            )  # fmt: skip
        a = agent("agent-t", address, upstream, "llm_provider", env=otel_env(receiver, "research-agent"))
        spawned.append(a)
        set_mode(upstream, "taxonomy", text="LLMProviderUnavailable")
        assert a.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}  # 2 attempts: trips at 2
        poll(lambda: a.ask("state")["state"] == "OPEN")
        assert a.ask("call 1")["outcomes"] == {"CircuitBreakerOpen": 1}
        a.send("quit")
        a.popen.wait(timeout=30)

        def span(name: str, service: str) -> list[dict[str, Any]]:
            return [s for s in receiver.spans if s["name"] == name and s["service"] == service]

        echo = "/mission_control.testing.EchoService/Echo"
        failed = poll(lambda: [s for s in span(echo, "research-agent") if "error.type" in s["attributes"]])
        attrs = failed[0]["attributes"]
        assert attrs["error.type"] == "LLMProviderUnavailable"
        assert attrs["error.severity"] == "high"
        assert attrs["error.service"] == "llm_provider"
        assert attrs["error.agent"] == "agent-t"
        assert attrs["error.operation"] == "Echo"
        assert attrs["session.id"]
        assert "user.id" not in attrs
        assert [e for e in failed[0]["events"] if e[0] == "mission_control.retry"]
        rejected = [
            s
            for s in span(echo, "research-agent")
            if any(e[0] == "mission_control.breaker" for e in s["events"])
        ]
        assert rejected and rejected[0]["attributes"]["error.type"] == "CircuitBreakerOpen"
        # the upstream's server span is a child of the agent's client span, across processes
        server_spans = poll(lambda: span(echo, "llm-upstream"))
        client_ids = {(s["trace_id"], s["span_id"]) for s in span(echo, "research-agent")}
        assert any((s["trace_id"], s["parent"]) in client_ids for s in server_spans)
        # the control plane traced the transition
        move = poll(lambda: span("mission_control.breaker.transition", "mc-plane"))
        assert (move[0]["attributes"]["breaker.old_state"], move[0]["attributes"]["breaker.new_state"]) == (
            "CLOSED", "OPEN",
        )  # fmt: skip
        assert move[0]["resource"]["deployment.environment"] == "test"
        assert move[0]["resource"]["service.version"]

        def metric(service: str, name: str) -> list[dict[str, Any]]:
            return [p for p in receiver.points if p["service"] == service and p["name"] == name]

        agent_errors = poll(lambda: metric("research-agent", "mission_control.errors"))
        assert any(p["attributes"].get("error.type") == "LLMProviderUnavailable" for p in agent_errors)
        assert poll(lambda: metric("research-agent", "mission_control.calls.rejected"))
        assert poll(lambda: metric("research-agent", "mission_control.retries"))
        fleet = poll(lambda: metric("mc-plane", "mission_control.fleet.errors"))
        assert any(p["attributes"].get("error.agent") == "agent-t" for p in fleet)
        assert poll(
            lambda: [p for p in metric("mc-plane", "mission_control.breaker.opens") if p["value"] >= 1]
        )
        assert poll(lambda: metric("mc-plane", "mission_control.config.reloads"))
        assert poll(lambda: metric("mc-plane", "mission_control.breaker.state"))
        # the secret header reached the receiver as metadata, and nowhere else
        assert any(SECRET in v for _, v in receiver.metadata)
        assert not any(SECRET.encode() in raw for raw in receiver.raw)
        out, err = capfd.readouterr()
        assert SECRET not in out + err
        # one JSON error line per failed call, with the trace id
        lines = [line for line in err.splitlines() if '"error_type": "LLMProviderUnavailable"' in line]
        assert lines and '"trace_id": "' in lines[0] and '"session_id"' in lines[0]


def in_memory() -> tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return (
        Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]), component="agent", agent="a"),
        spans,
        reader,
    )


POLICY = ServicePolicy(service="llm_provider", max_retries=0, backoff=Backoff(0.001, jitter=0))


@pytest.mark.parametrize("opt_in", [False, True])
def test_user_id_only_when_opted_in(opt_in: bool) -> None:
    telemetry, spans, _ = in_memory()
    telemetry.include_user_id = opt_in
    mc = MissionControl("a", config={"llm_provider": POLICY}, telemetry=telemetry)

    @mc.guard("llm_provider")
    def generate() -> None:
        raise LLMProviderUnavailable(
            "m", "down", context=ErrorContext("llm_provider", "a", "gen", "s", user_id="u-1")
        )

    with pytest.raises(LLMProviderUnavailable):
        generate()
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "LLMProviderUnavailable"
    assert ("user.id" in span.attributes) is opt_in


def test_broken_telemetry_never_breaks_a_call() -> None:
    telemetry, _, _ = in_memory()

    def explode(*_: object, **__: object) -> None:
        raise RuntimeError("exporter bug")

    telemetry.errors.add = explode  # type: ignore[method-assign]
    mc = MissionControl("a", config={"llm_provider": POLICY}, telemetry=telemetry)

    @mc.guard("llm_provider")
    def generate() -> None:
        raise LLMProviderUnavailable("m", "down")

    for _ in range(3):
        with pytest.raises(LLMProviderUnavailable):
            generate()


def test_exporter_at_a_closed_port_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    mc = MissionControl("a", config={"llm_provider": POLICY})
    assert mc.telemetry is not None
    results = []

    @mc.guard("llm_provider")
    def generate(i: int) -> int:
        if i % 3 == 0:
            raise ConnectionResetError("down")
        return i

    for i in range(1, 31):
        try:
            results.append(generate(i))
        except LLMProviderUnavailable:
            results.append(-1)
    assert results == [-1 if i % 3 == 0 else i for i in range(1, 31)]
    mc.close()


def test_otlp_over_http_when_the_protocol_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` (Axiom's documented way) sends spans and
    metrics to ``/v1/traces`` and ``/v1/metrics`` of a real HTTP receiver, headers included."""
    with HttpReceiver() as receiver:
        for key, value in otel_env(receiver, "http-agent").items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        mc = MissionControl("a", config={"llm_provider": POLICY})
        assert mc.telemetry is not None

        @mc.guard("llm_provider")
        def generate() -> None:
            raise LLMProviderUnavailable("m", "down")

        with pytest.raises(LLMProviderUnavailable):
            generate()
        failed = poll(lambda: [s for s in receiver.spans if s["attributes"].get("error.type")])
        assert failed[0]["service"] == "http-agent"
        assert failed[0]["attributes"]["error.type"] == "LLMProviderUnavailable"
        assert poll(lambda: [p for p in receiver.points if p["name"] == "mission_control.errors"])
        assert {"/v1/traces", "/v1/metrics"} <= set(receiver.paths)
        assert ("authorization", f"Bearer {SECRET}") in receiver.metadata
        mc.close()


def test_an_unknown_otlp_protocol_turns_telemetry_off_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    mc = MissionControl("a", config={"llm_provider": POLICY})
    assert mc.telemetry is None
    assert "OTLP protocol 'http/json' is not supported" in caplog.text
    mc.close()
