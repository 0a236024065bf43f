"""I5 when a follower dies while its link to the leader is stalled (real etcd, a leader and a
follower process, the follower reaching the leader through a TCP proxy the test pauses).

The follower took the agent's batches but the leader has not: the agent must not have been
acknowledged, so that when the follower is killed (kill -9, what it held never delivered) the
agent sends them again to the leader, which counts each failure exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.tcp_pause import PausableProxy

SERVICE = "relay_ack_svc"
BATCHES, FAILURES = 5, 2  # failures per batch
THRESHOLD = BATCHES * FAILURES
FAILED = {"failures": FAILURES, "trailing_failures": FAILURES}
#: How long an acknowledgement the follower must not send yet is waited for.
NO_ACK_WAIT = 2.0


def leader_of(endpoint: str, prefix: str) -> str | None:
    text = etcdctl(endpoint, "get", f"{prefix}/leader", "--print-value-only").strip()
    return json.loads(text)["instance"] if text else None


def counted(address: str) -> int:
    """Failures of SERVICE the replica took (on the leader: what its engine counted)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
    return stats.errors_by_service.get(SERVICE, 0)


async def until_counted(address: str, want: int) -> None:
    deadline = time.monotonic() + 30
    while (got := await asyncio.to_thread(counted, address)) != want:
        assert got < want, f"{address} counted {got} failures, more than {want}"
        assert time.monotonic() < deadline, f"{address} counted {got} failures, not {want}"
        await asyncio.sleep(0.05)


async def no_ack_past(agent: RawAgent, sequence: int) -> None:
    """Give an acknowledgement past ``sequence`` a bounded chance to come; it must not."""
    with contextlib.suppress(TimeoutError):
        await agent.wait_for(lambda: agent.acknowledged() > sequence, timeout=NO_ACK_WAIT)
    assert agent.acknowledged() == sequence, "acknowledged before the leader had the batch"


async def stalled_then_killed(proxy: PausableProxy, follower: Proc, addresses: dict[str, str]) -> int:
    """Report through the follower, stalling its link twice; kill it during the second stall.
    Returns the highest sequence the agent saw acknowledged."""
    async with RawAgent(addresses["follow"], "agent-k", series="run-1", instance="p1") as agent:
        await agent.report_numbered(1, SERVICE, **FAILED)  # through the proxy, to the leader
        await until_counted(addresses["lead"], FAILURES)
        proxy.pause()
        await agent.send_numbered(2, SERVICE, **FAILED)
        await until_counted(addresses["follow"], 2 * FAILURES)  # the follower took it...
        await no_ack_past(agent, 1)  # ...but the leader did not: no acknowledgement yet
        proxy.resume()
        await agent.wait_for(lambda: agent.acknowledged() == 2, timeout=30)
        await until_counted(addresses["lead"], 2 * FAILURES)
        proxy.pause()
        for sequence in range(3, BATCHES + 1):
            await agent.send_numbered(sequence, SERVICE, **FAILED)
        await until_counted(addresses["follow"], THRESHOLD)
        await no_ack_past(agent, 2)
        await asyncio.to_thread(follower.kill)  # kill -9, with the batches on the way
        proxy.cut()  # what the stalled link held never reaches the leader
        await agent.wait_for(lambda: agent.error is not None, timeout=30)
        return agent.acknowledged()


async def test_a_follower_acknowledges_a_batch_only_once_the_leader_has_it(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proxy = await PausableProxy().start()
    try:
        addresses: dict[str, str] = {}
        lead, addresses["lead"] = await asyncio.to_thread(
            control_plane, etcd_server.endpoint, prefix, "--instance-id", "lead", "--advertise", proxy.address
        )
        spawned.append(lead)
        proxy.target = addresses["lead"]
        await asyncio.to_thread(poll, lambda: leader_of(etcd_server.endpoint, prefix) == "lead")
        follow, addresses["follow"] = await asyncio.to_thread(
            control_plane, etcd_server.endpoint, prefix, "--instance-id", "follow"
        )
        spawned.append(follow)
        policy = policy_pb2.ServicePolicy(
            service=SERVICE, failure_threshold=THRESHOLD, success_threshold=1, wait_duration_secs=60
        )
        with grpc.insecure_channel(addresses["lead"]) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            await asyncio.to_thread(stub.PutPolicy, pb.PutPolicyRequest(policy=policy), timeout=10)
        acknowledged = await stalled_then_killed(proxy, follow, addresses)
        assert acknowledged == 2
        assert await asyncio.to_thread(counted, addresses["lead"]) == 2 * FAILURES
        async with RawAgent(addresses["lead"], "agent-k", (SERVICE,), series="run-1", instance="p1") as agent:
            for sequence in range(acknowledged + 1, BATCHES + 1):  # what a real agent sends again
                await agent.report_numbered(sequence, SERVICE, **FAILED)
            await until_counted(addresses["lead"], THRESHOLD)
            await agent.wait_for(lambda: agent.state(SERVICE) == pb.BREAKER_STATE_OPEN, timeout=30)
            assert agent.breakers[SERVICE].failures == THRESHOLD, agent.breakers[SERVICE]
    finally:
        await proxy.close()
