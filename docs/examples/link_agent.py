"""The README's "Linking an agent" lines as a program that runs as is.

An agent process links a ``MissionControl`` and calls its upstream through a protected
channel. Here the upstream is a small gRPC server started below that serves grpc's own
health service, standing in for the README's LLM gateway (``GeneratorStub``).

Run it with a control plane going (``make run``)::

    python docs/examples/link_agent.py            # control plane at $MISSION_CONTROL_SERVER
                                                  # or 127.0.0.1:50051
"""

from __future__ import annotations

import os
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mission_control.client import MissionControl
from mission_control.interceptors import protected_channel


def start_gateway() -> tuple[grpc.Server, str]:
    """A stand-in upstream on a free loopback port: grpc's health service, SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def main() -> None:
    control_plane = os.environ.get("MISSION_CONTROL_SERVER", "127.0.0.1:50051")
    gateway, address = start_gateway()
    mc = MissionControl("research-agent", control_plane=control_plane).start()
    try:
        connected = mc.wait_connected(10)  # without it the agent runs on its own defaults
        channel = protected_channel(grpc.insecure_channel(address), mc, service="llm_provider")
        stub = health_pb2_grpc.HealthStub(channel)  # a generated stub, used as without us
        reply = stub.Check(health_pb2.HealthCheckRequest())  # raises CircuitBreakerOpen, ...
        print(f"connected to the control plane: {connected}")
        print(f"upstream answered: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
        print(f"breaker as this agent enforces it: {mc.breaker('llm_provider')}")
    finally:
        mc.close()
        gateway.stop(grace=None)


if __name__ == "__main__":
    main()
