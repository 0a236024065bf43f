""" "The fleet still works": what a legitimate agent needs from the control plane, checked end to end.

A fresh agent connects, trips a breaker of its own service and sees it open fleet-wide,
probes it back to CLOSED under a permit, is leased its share of a fleet limit, and
``GetErrorStatistics`` and gRPC health answer. Used after every hostile input.
"""

from __future__ import annotations

import uuid

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.agents import RawAgent

SERVICE_NAME = "mission_control.resilience.v1.ControlPlaneService"
CLOSED, OPEN, HALF_OPEN = pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN


def check_policy(service: str) -> policy_pb2.ServicePolicy:
    return policy_pb2.ServicePolicy(
        service=service,
        failure_threshold=3,
        success_threshold=1,
        wait_duration_secs=0.3,
        rate_limit_requests=100,
        rate_limit_window_secs=1.0,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=0.5),
    )


async def fleet_still_works(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    """Raises AssertionError (or an RpcError) unless a legitimate agent is fully served."""
    service = f"check-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, answer
        await stub.PutPolicy(pb.PutPolicyRequest(policy=check_policy(service)), timeout=10, metadata=metadata)
        async with RawAgent(address, f"legit-{service}", (service,)) as agent:
            await agent.wait_for(lambda: agent.policies.get(service) is not None)
            await agent.report(service, failures=3, trailing_failures=3)
            await agent.wait_for(lambda: agent.state(service) == OPEN)
            await agent.wait_for(lambda: agent.state(service) == HALF_OPEN)
            await agent.ask_probe(service)
            await agent.wait_for(lambda: any(g.service == service for g in agent.grants))
            await agent.report(service, probe_successes=1)
            await agent.wait_for(lambda: agent.state(service) == CLOSED)
            demand = pb.CapacityDemand(service=service, resource=f"{service}.requests", wanted=10)
            await agent.send(pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[demand])))
            await agent.wait_for(
                lambda: any(r.HasField("lease") and r.lease.service == service for r in agent.received)
            )
        assert await errors_of(stub, service) >= 3
        await stub.ListBreakers(pb.ListBreakersRequest(), timeout=10)
        await stub.DeletePolicy(pb.DeletePolicyRequest(service=service), timeout=10, metadata=metadata)


async def errors_of(stub: pb_grpc.ControlPlaneServiceStub, service: str, pages: int = 10) -> int:
    """The service's error count in GetErrorStatistics, reading up to ``pages`` pages."""
    request = pb.GetErrorStatisticsRequest()
    for _ in range(pages):
        answer = await stub.GetErrorStatistics(request, timeout=10)
        if service in answer.statistics.errors_by_service:
            return answer.statistics.errors_by_service[service]
        if not answer.next_page_token:
            break
        request = pb.GetErrorStatisticsRequest(page_token=answer.next_page_token)
    return 0
