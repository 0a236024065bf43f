"""An outcome batch whose stream is cancelled while the control plane takes it: the ledger
marked it counted when taking began, so it is taken in full, and the agent's resend of it
(its acknowledgement never came) is not counted again."""

from __future__ import annotations

import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane

from tests.server.test_fleet_breakers import address, put_policy, until
from tests.support.agents import RawAgent

SERVICE = "batch_svc"
SUMMARIES = 1000  # taken 16 at a time, the loop serving others in between
CANCEL_AT = 100


async def total_errors(running: RunningControlPlane) -> int:
    async with grpc.aio.insecure_channel(address(running)) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        reply = await stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5)
        return reply.statistics.errors_by_service[SERVICE]


async def test_a_batch_cut_off_by_a_cancelled_stream_counts_in_full_and_once(
    control_plane: RunningControlPlane,
) -> None:
    policy = policy_pb2.ServicePolicy(
        service=SERVICE, failure_threshold=10**6, rate_limit_requests=10**6, rate_limit_window_secs=1
    )
    await put_policy(control_plane, policy)
    plane = control_plane.plane
    first = await RawAgent(address(control_plane), "agent-c", (SERVICE,), series="c1").__aenter__()
    taken = 0
    gone_before_the_end: list[bool] = []

    def listener(agent_id: str, summary: pb.OutcomeSummary) -> None:
        nonlocal taken
        taken += 1
        if taken == CANCEL_AT and first._task is not None:
            first._task.cancel()  # the agent's stream ends half way through its batch
        if taken == SUMMARIES:
            gone_before_the_end.append(plane.hub.streams_of("agent-c") == 0)

    plane.outcome_listeners.append(listener)
    summaries = [pb.OutcomeSummary(service=SERVICE, failures=1)] * SUMMARIES
    batch = pb.OutcomeBatch(sequence=1, summaries=summaries)
    await first.send(pb.ConnectRequest(outcomes=batch))
    await until(lambda: taken >= CANCEL_AT and plane.hub.streams_of("agent-c") == 0)
    await first.__aexit__(None, None, None)
    await until(lambda: bool(gone_before_the_end), timeout=10)  # else the rest was dropped
    assert gone_before_the_end == [True]  # the stream was gone while the batch was taken
    assert await total_errors(control_plane) == SUMMARIES

    # the acknowledgement never came: the agent sends the batch again on a new stream
    async with RawAgent(address(control_plane), "agent-c", (SERVICE,), series="c1") as again:
        await again.send(pb.ConnectRequest(outcomes=batch))
        await again.wait_for(lambda: any(r.outcome_ack.sequence == 1 for r in again.received))
    assert plane.ledger.resent == 1
    assert await total_errors(control_plane) == SUMMARIES
