"""One client flooding the leader with epoch claims (``CapacityDemand.held_epoch``) does not
stop fleet leasing: real etcd, a real control plane and two real agent processes sharing a
limit by lease, and a raw Connect stream sending a claim every 5 ms, each 2 above the last
and in range (the clock's milliseconds + 100 s, below the bound of + 300 s). Every claim
moved the epoch and the leader leased nothing until the new one was recorded, so the code
before leased the agents 0 calls in most 2-s windows of the flood, with claims naming the
shared service or a service no policy has. Now the epoch moves at most once per 2 s, only
for a fleet-shared limit, and leases go on under the recorded epoch meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_fleet_limits import start_agents
from tests.server.test_lease_epoch_wipe import SERVICE, leased_run, put_policy
from tests.support.agents import RawAgent
from tests.support.procs import Proc, control_plane

WINDOWS = 4  # 2-s windows watched during the flood


def flood(address: str, service: str, stop: threading.Event, sent: list[int]) -> None:
    async def main() -> None:
        async with RawAgent(address, "claimer", (service,)) as agent:
            claim = round(time.time() * 1000) + 100_000
            while not stop.is_set():
                claim += 2
                demand = pb.CapacityDemand(
                    service=service, resource=f"{service}.requests", agents=1, held_epoch=claim
                )
                await agent.send(pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[demand])))
                sent[0] += 1
                await asyncio.sleep(0.005)

    asyncio.run(main())


def leased_calls(agents: Proc) -> int:
    return sum(len(times) for times in leased_run(agents)["leased"].values())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("service", [SERVICE, "no_such_service"])
def test_a_flood_of_epoch_claims_does_not_stop_leasing(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], service: str
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    put_policy(address)
    agents = start_agents(address, SERVICE, "f", [80.0, 80.0])
    spawned.append(agents)
    deadline = time.monotonic() + 60
    while leased_calls(agents) <= 10:  # both agents leased (the limit: 100 calls per 2 s)
        assert time.monotonic() < deadline, "the agents were never leased"
    stop, sent = threading.Event(), [0]
    thread = threading.Thread(target=flood, args=(address, service, stop, sent), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while sent[0] < 100:  # the claims are coming
            assert thread.is_alive() and time.monotonic() < deadline, "the claims never started"
            time.sleep(0.05)
        during = [leased_calls(agents) for _ in range(WINDOWS)]
    finally:
        stop.set()
        thread.join(10)
    assert sent[0] > 100 * WINDOWS
    # every window of the flood leased (the code before: 0 in most)
    assert all(calls > 10 for calls in during), during
