"""I4 across an etcd wipe, with real processes: agents leased by a leader of a store with a
long history keep sharing the fleet limit by lease after etcd lost its data (stopped, its
data dir deleted, started on the same ports) and the control plane was restarted (kill -9,
then started again on its address): the new leader finds no fleet-lease epoch record and a
leader key at a low revision, and its leases must still be above what the agents hold."""

from __future__ import annotations

import shutil
import time
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_fleet_limits import (
    GRANULARITY,
    LIMIT,
    WINDOW,
    fleet_policy,
    start_agents,
    worst_window,
)
from tests.support.etcd import write_history
from tests.support.procs import Proc, control_plane

SERVICE = "wiped_llm"


def put_policy(address: str) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        while True:
            try:
                stub.PutPolicy(pb.PutPolicyRequest(policy=fleet_policy(SERVICE)), timeout=10)
                return
            except grpc.RpcError:  # not leading yet, or the store not back yet
                assert time.monotonic() < deadline, "the policy could not be put"
                time.sleep(0.2)


def leased_run(agents: Proc, seconds: float = 2.0) -> dict[str, Any]:
    result: dict[str, Any] = agents.ask(f"run {seconds}", timeout=60)
    return result


@pytest.mark.timeout(240)
def test_agents_share_by_lease_again_after_etcd_lost_its_data(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    write_history(etcd.endpoint, f"{prefix}/history", 300)
    plane, address = control_plane(etcd.endpoint, prefix)
    spawned.append(plane)
    put_policy(address)
    agents = start_agents(address, SERVICE, "w", [80.0, 80.0])  # 160/s against 100/s: the bound bites
    spawned.append(agents)
    deadline = time.monotonic() + 60
    while not all(leased_run(agents)["leased"].values()):
        assert time.monotonic() < deadline, "the agents were never leased"

    plane.kill()  # kill -9: the new process knows nothing of the leases out
    etcd.stop()
    shutil.rmtree(etcd.data_dir)
    etcd.start()  # same ports, no data: no epoch record, the leader key's revision starts over
    restarted, again = control_plane(etcd.endpoint, prefix, "--listen", address)
    spawned.append(restarted)
    assert again == address
    put_policy(address)  # the operator puts back what the store lost

    # The agents take the new leader's leases (on the old code they ignore every lease of
    # a lower epoch for the rest of their lives, and only ever spend their last share).
    deadline = time.monotonic() + 60
    while True:
        result = leased_run(agents)
        if all(len(times) > 10 for times in result["leased"].values()):
            break
        assert time.monotonic() < deadline, f"not leased again: {result['leased']}"
    every = [t for times in result["admitted"].values() for t in times]
    assert worst_window(every, WINDOW) <= LIMIT + GRANULARITY, worst_window(every, WINDOW)
