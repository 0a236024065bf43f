"""A follower's own figures show each outcome batch once: an agent connected to it sends a
batch again (its acknowledgement was lost), the follower passes both on (the leader counts
the batch once) and shows it once in its per-replica statistics."""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.fleets import leader_and_follower
from tests.support.procs import Proc

SERVICE = "relayed_svc"


def statistics(address: str) -> pb.ErrorStatistics:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics


async def report_twice(address: str) -> None:
    for _ in range(2):  # the same batch on two streams: the first ack counts as lost
        async with RawAgent(address, "agent-f", (SERVICE,), series="f1") as agent:
            await agent.report_numbered(1, SERVICE, failures=3)


def test_a_resent_batch_shows_once_in_a_followers_figures(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    policy = policy_pb2.ServicePolicy(service=SERVICE, failure_threshold=10**6)
    leader, follower = leader_and_follower(etcd_server.endpoint, prefix, spawned, policy)

    asyncio.run(report_twice(follower))
    deadline = time.monotonic() + 30
    while statistics(leader).errors_by_service[SERVICE] < 3:
        assert time.monotonic() < deadline, "the leader never counted the batch"
        time.sleep(0.1)
    shown = statistics(follower)
    assert shown.errors_by_service[SERVICE] == 3 and shown.total_errors == 3
    assert shown.outcome_batches_resent == 1
    counted = statistics(leader)
    assert counted.errors_by_service[SERVICE] == 3
