"""Endpoint places are shared between agents, not connections: behind a follower, every
agent's batches reach the leader through one relay, which names the agent each came from.
Real etcd, a leader and a follower process, two agents on the follower: one agent's junk
endpoints fill the cap; the other agent's failing endpoint still gets a place at the leader
and opens for the fleet."""

from __future__ import annotations

import asyncio

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.fleets import leader_and_follower
from tests.support.polling import poll
from tests.support.procs import Proc

SERVICE = "relayed_cap"
REAL = f"{SERVICE}/openai/gpt-x"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=2, wait_duration_secs=60, max_endpoints=3, endpoint_idle_secs=300
)


def breakers(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as channel:
        answer = pb_grpc.ControlPlaneServiceStub(channel).ListBreakers(pb.ListBreakersRequest(), timeout=5)
    return {b.name: b.state for b in answer.breakers}


async def fill_then_fail(follower: str, leader: str) -> None:
    async with RawAgent(follower, "filler", series="fill") as filler:
        for i in range(3):
            await filler.report_numbered(i + 1, f"{SERVICE}/junk{i}", successes=1)
        await asyncio.to_thread(
            poll, lambda: sum(n.startswith(f"{SERVICE}/junk") for n in breakers(leader)) == 3
        )
        async with RawAgent(follower, "victim", series="victim") as victim:
            await victim.report_numbered(1, REAL, failures=2, trailing_failures=2)
            await asyncio.to_thread(poll, lambda: breakers(leader).get(REAL) == pb.BREAKER_STATE_OPEN)


def test_an_agent_behind_a_follower_gets_its_own_share_of_endpoint_places(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    leader, follower = leader_and_follower(etcd_server.endpoint, prefix, spawned, POLICY)
    poll(lambda: SERVICE in {p.service for p in _policies(follower)})
    asyncio.run(fill_then_fail(follower, leader))


def _policies(address: str) -> list[pb.ServicePolicy]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return list(stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies)
