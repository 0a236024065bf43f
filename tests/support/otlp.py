"""Real OTLP receivers on free ports: the collector's gRPC trace and metrics services, and the
OTLP/HTTP endpoints (``POST /v1/traces``, ``/v1/metrics`` with protobuf bodies)."""

from __future__ import annotations

import gzip
import http.server
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


class HttpReceiver(Receiver):
    """The same records, received over OTLP/HTTP (protobuf bodies, gzip or not)."""

    def __init__(self) -> None:
        super().__init__()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.raw.append(body)
                    receiver.metadata += [(k.lower(), v) for k, v in self.headers.items()]
                    receiver.paths.append(self.path)
                if self.path == "/v1/traces":
                    receiver._spans(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.paths: list[str] = []
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.http.server_address[1]}"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> HttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()
