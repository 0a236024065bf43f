"""An upstream gRPC service that echoes, or fails as a test tells it to.

In-process: ``with Upstream("llm-primary") as up: up.address``. As its own process:
``python -m tests.support.upstream NAME`` prints ``PORT <n>``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
from mission_control.client.status import to_grpc_status

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


class EchoServicer(pb_grpc.EchoServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = pb.SetModeRequest(mode="ok")
        self.left = 0
        self.calls = 0
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def _current(self) -> pb.SetModeRequest:
        with self._lock:
            self.calls += 1
            self.arrivals.append(time.monotonic())
            mode = self.mode
            if mode.times:
                self.left -= 1
                if self.left < 0:
                    return pb.SetModeRequest(mode="ok")
            return mode

    def _answer(self, request: pb.EchoRequest, context: grpc.ServicerContext) -> pb.EchoResponse:
        mode = self._current()
        if mode.mode == "slow":
            time.sleep(mode.delay_secs)
        elif mode.mode == "fail":
            context.abort(grpc.StatusCode[mode.code or "UNAVAILABLE"], f"{self.name} told to fail")
        elif mode.mode == "pushback":
            value = mode.text or str(mode.pushback_ms)
            context.set_trailing_metadata((("grpc-retry-pushback-ms", value),))
            context.abort(grpc.StatusCode[mode.code or "UNAVAILABLE"], f"{self.name} pushes back")
        elif mode.mode == "taxonomy":
            context.abort_with_status(to_grpc_status(_example(mode.text)))
        elif mode.mode == "deadline":
            left = context.time_remaining()
            return pb.EchoResponse(text="none" if left is None else f"{left:.3f}", served_by=self.name)
        return pb.EchoResponse(text=request.text, served_by=self.name)

    def Echo(self, request, context):
        return self._answer(request, context)

    def EchoStream(self, request, context):
        first = self._answer(request, context)
        for i in range(3):
            yield pb.EchoResponse(text=f"{first.text}#{i}", served_by=self.name)

    def EchoCollect(self, request_iterator, context):
        texts = [r.text for r in request_iterator]
        answer = self._answer(pb.EchoRequest(text="+".join(texts)), context)
        return answer

    def EchoChat(self, request_iterator, context):
        for i, request in enumerate(request_iterator):
            answer = self._answer(request, context) if i == 0 else request
            yield pb.EchoResponse(text=answer.text, served_by=self.name)

    def SetMode(self, request, context):
        with self._lock:
            self.mode = request
            self.left = request.times
        return pb.SetModeResponse()

    def GetStats(self, request, context):
        with self._lock:
            response = pb.GetStatsResponse(calls=self.calls, arrivals=self.arrivals)
            if request.reset:
                self.calls = 0
                self.arrivals = []
        return response


def _example(name: str):  # type: ignore[no-untyped-def]
    from tests.support.raising_server import make_error

    return make_error(name)


class Upstream:
    """An Echo server on a free loopback port, in this process."""

    def __init__(self, name: str, interceptors: list[object] | None = None) -> None:
        self.servicer = EchoServicer(name)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), interceptors=interceptors)
        pb_grpc.add_EchoServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def set(self, mode: str, **fields: object) -> None:
        self.servicer.SetMode(pb.SetModeRequest(mode=mode, **fields), None)  # type: ignore[arg-type]

    @property
    def calls(self) -> int:
        return self.servicer.calls

    def __enter__(self) -> Upstream:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def set_mode(address: str, mode: str, **fields: object) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.EchoServiceStub(channel).SetMode(
            pb.SetModeRequest(mode=mode, **fields),
            timeout=5,  # type: ignore[arg-type]
        )


def stats(address: str, reset: bool = False) -> pb.GetStatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.EchoServiceStub(channel).GetStats(pb.GetStatsRequest(reset=reset), timeout=5)


if __name__ == "__main__":
    from mission_control.client.telemetry import telemetry_from_env
    from mission_control.interceptors import server_interceptor

    name = sys.argv[1] if len(sys.argv) > 1 else "upstream"
    telemetry = telemetry_from_env("upstream", name)
    chain: list[object] = [server_interceptor(agent=name)]
    if telemetry is not None:  # traced like a real service: its spans join the caller's trace
        chain.insert(0, telemetry.grpc_server_interceptor())
    upstream = Upstream(name, chain)
    upstream.server.start()
    print(f"PORT {upstream.port}", flush=True)
    upstream.server.wait_for_termination()


@contextlib.contextmanager
def serving(servicer: pb_grpc.EchoServiceServicer, workers: int = 8) -> Iterator[str]:
    """``servicer`` served on a free loopback port (in this process); yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        yield address
    finally:
        server.stop(0)
