"""A real OTLP/gRPC receiver (the collector's trace and metrics services) on a free port."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.metadata: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):
        with self._lock:
            self.raw.append(request.SerializeToString())
            self.metadata += [(k, str(v)) for k, v in context.invocation_metadata()]
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self._spans(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        self._metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def _spans(self, request: Any) -> None:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    with self._lock:
                        self.spans.append(
                            {
                                "name": span.name,
                                "service": resource.get("service.name"),
                                "resource": resource,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "events": [
                                    (e.name, {a.key: _value(a.value) for a in e.attributes})
                                    for e in span.events
                                ],
                            }
                        )

    def _metrics(self, request: Any) -> None:
        for rm in request.resource_metrics:
            service = {a.key: _value(a.value) for a in rm.resource.attributes}.get("service.name")
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    data = getattr(metric, metric.WhichOneof("data"))
                    for point in data.data_points:
                        value = point.as_int if point.HasField("as_int") else point.as_double
                        with self._lock:
                            self.points.append(
                                {
                                    "service": service,
                                    "name": metric.name,
                                    "value": value,
                                    "attributes": {a.key: _value(a.value) for a in point.attributes},
                                }
                            )

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)
