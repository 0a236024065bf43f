"""A client that claims it spends the whole fleet limit without a lease, and goes without a
goodbye, is believed no further than what the leader leased it (server/unleased_claims.py).
Real processes: a control plane on a real etcd, two agents in processes of their own
asking 1.5 times the limit between them, and one raw Connect client; what counts is what
the agents admitted."""

from __future__ import annotations

import asyncio
import time

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.lease_epoch import RECORD_AHEAD_SECS

from tests.support.agents import RawAgent
from tests.support.procs import Proc
from tests.support.replicas import fleet_limit, spending_agents, start_replicas, stop_agents

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "claims", 0.5, 100, 2.0, 3.0
RATE = 37.5  # each of two agents: 75 calls a second against 50
#: After this long a new leader believes no claim of an earlier leader's lease (none
#: can still be spent), and the claim below is one it never leased.
EARLIER_LEASES_END = RECORD_AHEAD_SECS + HORIZON + 2 * PERIOD
#: What the agents must admit between them, of the limit, in the window measured: one
#: client among three takes at most its own lease aside (old code: the whole limit, 0 admitted).
KEPT = 0.5


async def claim_everything_and_vanish(address: str) -> float:
    """Connect as a raw client, claim 10^9 units spent unleased (and 50 agents sharing
    the limit), hold a lease, claim it again, and end the stream without a goodbye."""
    demand = pb.CapacityDemand(
        service=SERVICE, resource=f"{SERVICE}.requests", wanted=1, safe_units=1e9, agents_known=50
    )
    report = pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[demand]))
    async with RawAgent(address, "mallory", (SERVICE,), instance="m1") as raw:
        await raw.send(report)
        await raw.wait_for(lambda: any(r.HasField("lease") for r in raw.received), timeout=30)
        await raw.send(report)
        await asyncio.sleep(0.2)  # (the stream must carry the demand before it ends)
    return time.time()


@pytest.mark.timeout(120)
def test_a_client_claiming_the_whole_limit_unleased_does_not_starve_the_agents(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON)
    address = start_replicas(etcd_server.endpoint, prefix, spawned, ("cp",), policy).addresses["cp"]
    started = time.time()
    agents = spending_agents(spawned, SERVICE, RATE, ("a0", address), ("a1", address))
    # the measurement is of a claim the leader can check: wait out its first term's window
    # in which an agent may still hold an earlier leader's lease
    time.sleep(max(0.0, started + EARLIER_LEASES_END + 1.0 - time.time()))

    gone = asyncio.run(claim_everything_and_vanish(address))
    # old code: the whole limit kept aside for H + 2 periods after the stream ended
    measured = (gone + 1.0, gone + 1.0 + HORIZON)
    time.sleep(max(0.0, measured[1] + 0.5 - time.time()))
    admitted = [t for answer in stop_agents(agents) for t in answer["admitted"]]
    got = sum(1 for t in admitted if measured[0] <= t < measured[1])
    limit = LIMIT * (measured[1] - measured[0]) / WINDOW
    assert got >= KEPT * limit, f"the agents admitted {got} of the limit's {limit:.0f} after the claim"
