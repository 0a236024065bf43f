"""Agents behind a follower each get a probe permit, as agents on the leader do (I3: an
asking agent gets one within one probe TTL unless the probes out are at the limit). The
follower asks the leader for its agents as one relay, and the leader gave one holder one
permit at a time: every agent behind a follower shared one probe, so a HALF_OPEN asked by
them took ``success_threshold`` probe times to close. Real processes: a leader and a
follower on a real etcd; two raw agents on the follower."""

from __future__ import annotations

import asyncio

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.engine import PROBE_TTL_SECS
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.procs import Proc
from tests.support.replicas import start_replicas

SERVICE = "behind"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=1, success_threshold=3, wait_duration_secs=0.5, timeout_secs=30
)  # a permit not given back is held 35 s (probe TTL + timeout): far past the bound below


async def ask_until(agents: list[RawAgent], enough: int, timeout: float = 30.0) -> None:
    """Every agent without a permit asks every 100 ms until ``enough`` permits are out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(len(a.grants) for a in agents) < enough:
        assert asyncio.get_running_loop().time() < deadline, [len(a.grants) for a in agents]
        for agent in agents:
            if not agent.grants:
                await agent.ask_probe(SERVICE)
        await asyncio.sleep(0.1)


async def two_probe_at_once(address: str) -> list[int]:
    async with RawAgent(address, "b0", (SERVICE,)) as b0, RawAgent(address, "b1", (SERVICE,)) as b1:
        await b0.report(SERVICE, failures=1, trailing_failures=1)
        for agent in (b0, b1):
            await agent.wait_for(lambda a=agent: a.state(SERVICE) == pb.BREAKER_STATE_HALF_OPEN, timeout=30)
        await ask_until([b0, b1], 1)  # the first probe goes alone
        first = b0 if b0.grants else b1
        generation = first.grants[0].generation
        await first.report(SERVICE, probe_successes=1, probe_generation=generation)
        first.grants.clear()
        # now up to three may run: each of the two asking gets one within a probe TTL (the
        # old code: the second waited until the first one's permit was given back or lapsed)
        await ask_until([b0, b1], 2, timeout=PROBE_TTL_SECS)
        return [len(b0.grants), len(b1.grants)]


def test_two_agents_behind_a_follower_each_get_a_permit_at_once(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    fleet = start_replicas(etcd_server.endpoint, prefix, spawned, ("r1", "r2"), POLICY)
    assert asyncio.run(two_probe_at_once(fleet.addresses["r2"])) == [1, 1]
