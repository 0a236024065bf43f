"""I5 across a relay that dies mid-way (real etcd cluster, three control-plane processes):
an agent reports through a follower, the follower is killed (kill -9) after passing on part
of the agent's batches, the agent sends what it saw no acknowledgement for to another
replica, and the leader counts each failure exactly once: the breaker opens at exactly its
threshold and the leader's figures are exact."""

from __future__ import annotations

import asyncio
import time

from mission_control.resilience.v1 import control_plane_pb2 as pb

from tests.server.test_high_availability import Fleet, fleet, put_policy  # noqa: F401 (fixture)
from tests.server.test_outcome_resend_processes import counted
from tests.support.agents import RawAgent

SERVICE = "llm_provider"
BATCHES, FAILURES = 5, 2  # failures per batch
THRESHOLD = BATCHES * FAILURES


async def until_counted(fleet: Fleet, replica: str, least: int, most: int, note: str = "") -> int:  # noqa: F811
    deadline = time.monotonic() + 30
    while not least <= (got := counted(fleet, replica)):
        assert got <= most, f"{replica} counted {got} failures, more than {most} ({note})"
        assert time.monotonic() < deadline, f"{replica} counted {got} failures, not {least} ({note})"
        await asyncio.sleep(0.02)
    assert got <= most, f"{replica} counted {got} failures, more than {most} ({note})"
    return got


async def test_a_follower_killed_mid_relay_leaves_each_failure_counted_once(fleet: Fleet) -> None:  # noqa: F811
    put_policy(fleet.stub("r1"), failure_threshold=THRESHOLD, success_threshold=1, wait_duration_secs=60)
    leader = fleet.leader()
    assert leader is not None
    doomed, other = fleet.followers()
    addr = {n: a for n, (_, a) in fleet.replicas.items()}
    failed = {"failures": FAILURES, "trailing_failures": FAILURES}
    async with RawAgent(addr[doomed], "agent-k", series="run-1", instance="p1") as agent:
        for sequence in (1, 2):
            await agent.send_numbered(sequence, SERVICE, **failed)
        await until_counted(fleet, leader, 1, THRESHOLD)  # the relay passed some on...
        for sequence in range(3, BATCHES + 1):
            await agent.send_numbered(sequence, SERVICE, **failed)
        await agent.wait_for(lambda: agent.acknowledged() >= BATCHES - 1)
        fleet.replicas[doomed][0].kill()  # ...and dies with the rest somewhere on the way
        await agent.wait_for(lambda: agent.error is not None, timeout=30)
        acknowledged = agent.acknowledged()
    async with RawAgent(addr[other], "agent-k", (SERVICE,), series="run-1", instance="p1") as agent:
        for sequence in range(acknowledged + 1, BATCHES + 1):  # what a real agent sends again
            await agent.report_numbered(sequence, SERVICE, **failed)
        got = await until_counted(fleet, leader, THRESHOLD, THRESHOLD, f"acknowledged {acknowledged}")
        await agent.wait_for(lambda: agent.state(SERVICE) == pb.BREAKER_STATE_OPEN, timeout=30)
        assert agent.breakers[SERVICE].failures == THRESHOLD, (acknowledged, agent.breakers[SERVICE])
    assert got == counted(fleet, leader) == THRESHOLD
    stats = fleet.stub(leader).GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
    # (what a follower relayed shows under the relay's name: exact in total)
    assert (stats.total_errors, stats.circuit_breaker_opens) == (THRESHOLD, 1), stats
    print(f"acknowledged by the killed follower: {acknowledged} of {BATCHES}")
