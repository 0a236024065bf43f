"""Hostile clients against a real control plane process on a real etcd: each case sends what
one client could send, then checks that the fleet still works for everyone else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane
from mission_control.server.etcd_process import EtcdProcess

from tests.support import procs
from tests.support.fleet_check import fleet_still_works
from tests.support.procs import Proc

U32 = 2**32 - 1
U64 = 2**64 - 1


@pytest.fixture
def plane(etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]) -> str:
    proc, address = procs.control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    return address


async def send_raw(address: str, *requests: pb.ConnectRequest, agent_id: str = "mallory") -> list[object]:
    """One Connect stream of a raw client: hello, the requests, then read until the control
    plane has acknowledged the last batch (or ended the stream)."""
    last = max((r.outcomes.sequence for r in requests if r.HasField("outcomes")), default=0)
    done = asyncio.Event()

    async def frames() -> AsyncIterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(hello=pb.AgentHello(agent_id=agent_id))
        for request in requests:
            yield request
        await done.wait()

    received: list[object] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.ControlPlaneServiceStub(channel).Connect(frames(), timeout=30)
        try:
            async for response in call:
                received.append(response)
                if response.HasField("outcome_ack") and response.outcome_ack.sequence >= last:
                    break
        except grpc.RpcError as err:
            received.append(err)
        finally:
            done.set()
            call.cancel()
    return received


def batch(sequence: int, *summaries: pb.OutcomeSummary, dropped: int = 0) -> pb.ConnectRequest:
    return pb.ConnectRequest(
        outcomes=pb.OutcomeBatch(sequence=sequence, summaries=summaries, dropped=dropped)
    )


async def put_policy(address: str, **fields: object) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        await stub.PutPolicy(pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(**fields)), timeout=10)


async def breakers(address: str) -> dict[str, pb.Breaker]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        answer = await stub.ListBreakers(pb.ListBreakersRequest(), timeout=10)
    return {b.name: b for b in answer.breakers}


async def poll(check, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- defect 1: integer overflow -------------------------------------------------------


async def test_overflowing_counts_saturate_and_the_breaker_still_moves(plane: str) -> None:
    await put_policy(plane, service="victim", failure_threshold=5, wait_duration_secs=0.3)
    await send_raw(
        plane,
        batch(
            1,
            pb.OutcomeSummary(service="victim", failures=1, trailing_failures=1),
            pb.OutcomeSummary(service="victim", failures=U32, trailing_failures=U32),
        ),
        batch(2, pb.OutcomeSummary(service="other", failures=U32, errors_by_type={"X": U32}), dropped=U64),
        batch(3, pb.OutcomeSummary(service="other", failures=U32, errors_by_type={"X": U32}), dropped=U64),
    )
    found = await breakers(plane)  # ListBreakers answers: no count beyond uint32
    assert found["victim"].state in (pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN)

    async def half_open() -> bool:  # the tick loop is alive: the wait elapses
        return (await breakers(plane))["victim"].state == pb.BREAKER_STATE_HALF_OPEN

    await poll(half_open)
    await fleet_still_works(plane)


async def test_a_background_loop_that_dies_takes_health_down(control_plane: RunningControlPlane) -> None:
    def broken() -> list[object]:
        raise ValueError("a breaker that cannot be shown")

    control_plane.plane.breakers.tick = broken  # type: ignore[method-assign]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="mission_control.resilience.v1.ControlPlaneService")

        async def not_serving() -> bool:
            answer = await health.Check(request, timeout=5)
            return answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await poll(not_serving)
    assert control_plane.plane.failed_loops == ["_tick_loop"]
