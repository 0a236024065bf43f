"""Forcing endpoint breakers (``service/endpoint``) over gRPC and from the dashboard, on a
real etcd: a known one is forced, an unknown one or one of a service without a policy is
refused, and the refusal names the real flag."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest
from mission_control.client.config import policy_from_proto
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.support.agents import RawAgent

ENDPOINT = "llm_provider/openai/gpt-x"


async def test_a_known_endpoint_breaker_is_forced_and_unknown_ones_are_refused(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    running = await start_control_plane(
        EtcdStore([etcd_server.endpoint]), "127.0.0.1:0", prefix=prefix, http="127.0.0.1:0"
    )
    try:
        await running.plane.put_policy(policy_from_proto(policy_pb2.ServicePolicy(service="llm_provider")))
        address = f"127.0.0.1:{running.port}"
        async with RawAgent(address, "agent-e", ("llm_provider",)) as agent:
            await agent.report(ENDPOINT, successes=1)
            for _ in range(500):  # seen once its outcomes are counted
                if running.plane.breakers.find(ENDPOINT) is not None:
                    break
                await asyncio.sleep(0.02)
            assert running.plane.breakers.find(ENDPOINT) is not None
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            forced = await stub.SetBreakerState(
                pb.SetBreakerStateRequest(name=ENDPOINT, state=pb.BREAKER_STATE_FORCED_OPEN, reason="INC-7")
            )
            assert forced.breaker.state == pb.BREAKER_STATE_FORCED_OPEN
            for name in ("llm_provider/openai/gpt-y", "storage_backend/s3"):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SetBreakerState(
                        pb.SetBreakerStateRequest(name=name, state=pb.BREAKER_STATE_FORCED_OPEN, reason="x")
                    )
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND, name
            assert "--create" in (refused.value.details() or "") or "policy" in (
                refused.value.details() or ""
            )
            with pytest.raises(grpc.aio.AioRpcError) as typo:
                await stub.SetBreakerState(
                    pb.SetBreakerStateRequest(
                        name="llm_provder", state=pb.BREAKER_STATE_FORCED_OPEN, reason="x"
                    )
                )
            assert "use --create" in (typo.value.details() or "") and "llm_provider" in (
                typo.value.details() or ""
            )
        # the dashboard: the same names, the same check
        assert running.dashboard is not None
        base = f"http://{running.dashboard.address}/api/breakers"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/{ENDPOINT}/reset", json={"reason": "over"}) as reply:
                assert reply.status == 200, await reply.text()
            async with session.post(f"{base}/llm_provder/force-open", json={"reason": "x"}) as reply:
                assert reply.status == 404 and "--create" in await reply.text()
        assert running.plane.breakers.find("llm_provder") is None
        assert running.plane.breakers.find(ENDPOINT).state == pb.BREAKER_STATE_CLOSED  # type: ignore[union-attr]
    finally:
        await running.stop(grace=0.5)
