"""A server that raises the taxonomy error a test asks for (GetBreaker name = variant).

Run: python -m tests.support.raising_server {sync|aio}; prints "PORT <n>" when ready.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures

import grpc
from grpc_reflection.v1alpha import reflection
from mission_control.client.errors import (
    AgentCriticalFailure,
    CircuitBreakerOpen,
    ConfigurationError,
    ErrorContext,
    LLMProviderUnavailable,
    MissionControlError,
    OperationTimeout,
    ResourceExhausted,
    StorageFailure,
)
from mission_control.interceptors import aio_server_interceptor, server_interceptor
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

CTX = ErrorContext("llm_provider", "research-agent", "generate", "session-42", user_id="u-7")


def make_error(name: str) -> MissionControlError:
    """The error a test expects for ``name``; tests import this to compare fields."""
    return {
        "AgentCriticalFailure": lambda: AgentCriticalFailure("research-agent", "planner crashed"),
        "LLMProviderUnavailable": lambda: LLMProviderUnavailable("gpt-x", "connection reset"),
        "StorageFailure": lambda: StorageFailure("duckdb", "write", "disk full"),
        "CircuitBreakerOpen": lambda: CircuitBreakerOpen("llm_provider", 5, retry_after=42.5),
        "ResourceExhausted": lambda: ResourceExhausted("llm_tokens", 1200, 1000, retry_after=1.5),
        "ConfigurationError": lambda: ConfigurationError.from_violations(
            [("llm.api_key", "API key cannot be empty"), ("agent.max_concurrent", "Must be > 0")]
        ),
        "OperationTimeout": lambda: OperationTimeout("llm_generation", 30),
    }[name]()


def _raise(name: str) -> None:
    if name == "crash":
        raise RuntimeError("secret internal detail")
    try:
        raise OSError("upstream said no")
    except OSError as cause:
        error = make_error(name)
        error.context = CTX
        raise error from cause


class Servicer(pb_grpc.ControlPlaneServiceServicer):
    def GetBreaker(self, request, context):
        _raise(request.name)

    def WatchBreakers(self, request, context):
        yield pb.WatchBreakersResponse(breaker=pb.Breaker(name="first"))
        _raise(request.names[0])


class AioServicer(pb_grpc.ControlPlaneServiceServicer):
    async def GetBreaker(self, request, context):
        _raise(request.name)

    async def WatchBreakers(self, request, context):
        yield pb.WatchBreakersResponse(breaker=pb.Breaker(name="first"))
        _raise(request.names[0])


SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    reflection.SERVICE_NAME,
)


def run_sync() -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[server_interceptor(agent="raising-server")],
    )
    pb_grpc.add_ControlPlaneServiceServicer_to_server(Servicer(), server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


async def run_aio() -> None:
    server = grpc.aio.server(interceptors=[aio_server_interceptor(agent="raising-server")])
    pb_grpc.add_ControlPlaneServiceServicer_to_server(AioServicer(), server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[1:] == ["aio"]:
        asyncio.run(run_aio())
    else:
        run_sync()
