"""A batch sent again — to the leader itself, or over another replica — counts once
(real etcd cluster, three control-plane processes)."""

from __future__ import annotations

import asyncio
import time

from mission_control.resilience.v1 import control_plane_pb2 as pb

from tests.server.test_high_availability import Fleet, fleet, put_policy  # noqa: F401 (fixture)
from tests.support.agents import RawAgent

SERVICE = "llm_provider"


def counted(fleet: Fleet, replica: str) -> int:  # noqa: F811
    """Failures of SERVICE the replica took (on the leader: what its engine counted)."""
    stats = fleet.stub(replica).GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
    return stats.errors_by_service.get(SERVICE, 0)


async def until_counted(fleet: Fleet, replica: str, want: int) -> None:  # noqa: F811
    deadline = time.monotonic() + 30
    while (got := counted(fleet, replica)) != want:
        assert got < want, f"{replica} counted {got} failures, more than {want}"
        assert time.monotonic() < deadline, f"{replica} counted {got} failures, not {want}"
        await asyncio.sleep(0.05)


async def test_a_batch_resent_over_another_replica_is_counted_once(fleet: Fleet) -> None:  # noqa: F811
    put_policy(fleet.stub("r1"), failure_threshold=6, success_threshold=1, wait_duration_secs=60)
    leader = fleet.leader()
    assert leader is not None
    first, second = fleet.followers()
    addr = {n: a for n, (_, a) in fleet.replicas.items()}
    four = {"failures": 4, "trailing_failures": 4}
    # taken by a follower, which relays it to the leader...
    async with RawAgent(addr[first], "agent-1", series="run-1") as agent:
        await agent.report_numbered(1, SERVICE, **four)
    await until_counted(fleet, leader, 4)
    # ...and sent again by the agent, which never saw the acknowledgement: to the leader
    async with RawAgent(addr[leader], "agent-1", series="run-1") as agent:
        await agent.report_numbered(1, SERVICE, **four)  # acknowledged: taken or dropped by now
    assert counted(fleet, leader) == 4
    # and over the other follower, whose relay passes it on before the agent's next batch
    async with RawAgent(addr[second], "agent-1", series="run-1", services=(SERVICE,)) as agent:
        await agent.report_numbered(1, SERVICE, **four)
        await agent.report_numbered(2, SERVICE, failures=2, trailing_failures=2)
        await agent.wait_for(lambda: agent.state(SERVICE) == pb.BREAKER_STATE_OPEN, timeout=30)
        # counted twice, the breaker would have opened at 8 (the threshold is 6)
        assert agent.breakers[SERVICE].failures == 6
    assert counted(fleet, leader) == 6
