"""A new leader, with no agent back to report a lease, keeps the earlier leader's grants:
two control-plane processes on a real etcd, the leader killed (see server/lease_epoch.py)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.app import RunningControlPlane
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc
from tests.support.replicas import fleet_limit, start_replicas

SERVICE, PERIOD, LIMIT, WINDOW = "shared", 0.5, 200, 2.0
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period


def stored(endpoint: str, key: str) -> dict | None:  # type: ignore[type-arg]
    text = etcdctl(endpoint, "get", key, "--print-value-only").strip()
    return json.loads(text) if text else None


def demand() -> pb.ConnectRequest:
    """A new agent's demand: it never held a lease (nothing to report of one)."""
    wanted = pb.CapacityDemand(service=SERVICE, resource=f"{SERVICE}.requests", wanted=UNITS, agents=1)
    return pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[wanted]))


async def first_lease(address: str, agent_id: str) -> pb.CapacityLease:
    async with RawAgent(address, agent_id, (SERVICE,)) as agent:
        await agent.send(demand())
        await agent.wait_for(lambda: any(r.HasField("lease") for r in agent.received), timeout=20)
        return next(r.lease for r in agent.received if r.HasField("lease"))


@pytest.mark.timeout(120)
def test_a_new_leader_keeps_what_the_killed_leader_granted(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint = etcd_server.endpoint
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD)
    fleet = start_replicas(endpoint, prefix, spawned, ("first", "second"), policy)

    # a fresh fleet: nothing was leased before, the first agent gets the whole period
    granted = asyncio.run(first_lease(fleet.addresses["first"], "early"))
    assert granted.units == UNITS
    record = poll(lambda: stored(endpoint, f"{prefix}/fleet-lease-epoch"))
    assert (record["epoch"], record["leader"]) == (granted.epoch, "first")
    assert record["until"] >= time.time() + PERIOD, "leased past what the record allows"

    # the leader dies with that grant out (its agent may still spend it, cut off); the
    # only agent the new leader hears from is new and reports no lease
    fleet.procs["first"].kill()
    fleet.wait_leader("second")
    lease = asyncio.run(first_lease(fleet.addresses["second"], "late"))
    assert lease.epoch > granted.epoch
    assert lease.units == 0, "the new leader leased what the earlier leader's grant may still spend"
    poll(lambda: (stored(endpoint, f"{prefix}/fleet-lease-epoch") or {}).get("leader") == "second")


async def test_a_malformed_record_is_refused_shown_in_stats_and_stops_nothing(
    control_plane: RunningControlPlane, etcd_server: EtcdProcess, prefix: str
) -> None:
    plane = control_plane.plane
    key = f"{prefix}/fleet-lease-epoch"
    etcdctl(etcd_server.endpoint, "put", key, '{"epoch": -1}')
    etcdctl(etcd_server.endpoint, "put", f"{prefix}/policies/after", '{"service": "after"}')

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}")
    stub = pb_grpc.ControlPlaneServiceStub(channel)

    async def shown() -> bool:
        stats = (await stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5)).statistics
        return any(e.key == key and "epoch:" in e.error and "leader:" in e.error for e in stats.config_errors)

    deadline = time.monotonic() + 10
    while not (await shown() and plane.policies.stored("after") is not None):
        assert time.monotonic() < deadline, "the bad record was not shown, or the watch stopped"
        await asyncio.sleep(0.05)
    assert plane.lease_epochs.malformed == 1
    assert plane.lease_epochs.seen  # a sign of earlier leases for the next leader to take over
    await channel.close()
