"""I5 through a long spell without a leader (real etcd, a leader and a follower process, the
follower reaching the leader through a TCP proxy the test pauses and cuts).

An agent on the follower reports more batches than a follower once held one by one (4,096);
none is acknowledged. It fails over to the leader and sends every one again there. When the
follower's link comes back, what it held (merged per agent session) must not count again:
the leader counts each failure exactly once."""

from __future__ import annotations

import asyncio

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_relay_ack_after_leader import counted, leader_of, until_counted
from tests.support.agents import RawAgent
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.tcp_pause import PausableProxy

SERVICE = "relay_ack_svc"  # (what ``counted`` reads)
#: Batches past the old bound of 4,096, one failure each.
BATCHES = 4500
#: Sent this many at a time, then a pause: within an agent's summary budget (1,024 a second).
CHUNK, CHUNK_SECS = 40, 0.05


async def send_all(agent: RawAgent, first: int, last: int) -> None:
    for sequence in range(first, last + 1):
        await agent.send_numbered(sequence, SERVICE, failures=1, trailing_failures=1)
        if sequence % CHUNK == 0:
            await asyncio.sleep(CHUNK_SECS)


async def test_batches_held_through_a_long_spell_and_sent_again_elsewhere_count_once(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proxy = await PausableProxy().start()
    try:
        lead, lead_address = await asyncio.to_thread(
            control_plane, etcd_server.endpoint, prefix, "--instance-id", "lead", "--advertise", proxy.address
        )
        spawned.append(lead)
        proxy.target = lead_address
        await asyncio.to_thread(poll, lambda: leader_of(etcd_server.endpoint, prefix) == "lead")
        follow, follow_address = await asyncio.to_thread(
            control_plane, etcd_server.endpoint, prefix, "--instance-id", "follow"
        )
        spawned.append(follow)
        policy = policy_pb2.ServicePolicy(
            service=SERVICE,
            failure_threshold=10 * BATCHES,
            success_threshold=1,
            wait_duration_secs=60,
            rate_limit_requests=1_000_000,
            rate_limit_window_secs=1,
        )
        with grpc.insecure_channel(lead_address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            await asyncio.to_thread(stub.PutPolicy, pb.PutPolicyRequest(policy=policy), timeout=10)
        async with RawAgent(follow_address, "agent-s", series="run-1", instance="p1") as agent:
            await agent.report_numbered(1, SERVICE, failures=1, trailing_failures=1)  # the link is up
            await until_counted(lead_address, 1)
            proxy.pause()
            proxy.cut()  # the follower's link breaks; its next one never gets an answer
            await send_all(agent, 2, BATCHES + 1)
            await until_counted(follow_address, BATCHES + 1)  # the follower took them all...
            assert agent.acknowledged() == 1  # ...and acknowledged none
        # the agent fails over to the leader and sends again what was not acknowledged
        async with RawAgent(lead_address, "agent-s", series="run-1", instance="p1") as agent:
            await send_all(agent, 2, BATCHES + 1)
            await agent.wait_for(lambda: agent.acknowledged() == BATCHES + 1, timeout=60)
        await until_counted(lead_address, BATCHES + 1)
        # a batch that follows everything the follower held: acknowledged once the leader
        # acknowledged all of that
        async with RawAgent(follow_address, "agent-m", series="run-m", instance="pm") as marker:
            await marker.send_numbered(1, SERVICE, successes=1)
            proxy.resume()
            await marker.wait_for(lambda: marker.acknowledged() == 1, timeout=90)
        assert await asyncio.to_thread(counted, lead_address) == BATCHES + 1
        with grpc.insecure_channel(lead_address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
        assert stats.outcome_batches_resent  # what the follower held came, and was not counted
    finally:
        await proxy.close()
