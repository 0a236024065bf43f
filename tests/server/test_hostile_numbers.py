"""Stored values with numbers no replica can use (put by hand, as etcdctl does) are refused
like other garbage: a control plane process on a real etcd keeps serving, keeps the last
good value and goes on with everything else (see DESIGN: a malformed etcd value never
replaces the last good config)."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.lease_epoch import epoch_bound

from tests.support.agents import RawAgent
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

HUGE = 2**64 - 1
MAX_EPOCH = 2**53  # what a record may hold (server/lease_epoch.py)


def stub(address: str) -> pb_grpc.ControlPlaneServiceStub:
    return pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))


def refused(address: str, key: str, words: str) -> bool:
    """Whether the control plane shows ``key`` refused for ``words``."""
    stats = stub(address).GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
    return any(e.key == key and words in e.error for e in stats.config_errors)


def serving(address: str) -> bool:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def breakers(address: str) -> dict[str, pb.Breaker]:
    listed = stub(address).ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers
    return {b.name: b for b in listed}


def stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def open_record(name: str, generation: int, opened_at: float, wait: str) -> str:
    fields = {"name": name, "state": "BREAKER_STATE_OPEN", "generation": str(generation)}
    fields |= {"opened_at": stamp(opened_at), "changed_at": stamp(opened_at), "open_remaining": wait}
    return json.dumps(fields)


async def first_lease(address: str, service: str) -> pb.CapacityLease:
    wanted = pb.CapacityDemand(service=service, resource=f"{service}.requests", wanted=10, agents=1)
    async with RawAgent(address, "hostile-epoch", (service,)) as agent:
        await agent.send(pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[wanted])))
        await agent.wait_for(lambda: any(r.HasField("lease") for r in agent.received), timeout=20)
        return next(r.lease for r in agent.received if r.HasField("lease"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("epoch", [HUGE, MAX_EPOCH - 1, 10**15])
def test_a_huge_epoch_record_is_refused_and_the_leader_leases_on(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], epoch: int
) -> None:
    """Beyond 2^53, or far above the wall clock in milliseconds (real epochs are about
    1.7e12): taken, it would hold every later leader's leases out of the agents."""
    endpoint, key = etcd_server.endpoint, f"{prefix}/fleet-lease-epoch"
    etcdctl(endpoint, "put", key, json.dumps({"epoch": epoch, "leader": "r9", "until": time.time() + 2}))
    plane, address = control_plane(endpoint, prefix)
    spawned.append(plane)
    policy = policy_pb2.ServicePolicy(
        service="leased",
        rate_limit_requests=100,
        rate_limit_window_secs=2.0,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=0.5),
    )
    stub(address).PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
    poll(lambda: refused(address, key, "epoch:"))

    lease = asyncio.run(first_lease(address, "leased"))
    assert 0 < lease.epoch < epoch_bound(time.time())

    def record() -> dict[str, Any]:
        return json.loads(etcdctl(endpoint, "get", key, "--print-value-only") or "{}")  # type: ignore[no-any-return]

    poll(lambda: record().get("epoch") != epoch)  # its own epoch, stored fenced
    assert record()["epoch"] == lease.epoch
    assert serving(address)


def test_a_breaker_record_with_an_out_of_range_generation_keeps_the_last_good_one(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint = etcd_server.endpoint
    plane, address = control_plane(endpoint, prefix)
    spawned.append(plane)
    for service in ("bx", "by"):
        policy = policy_pb2.ServicePolicy(service=service, failure_threshold=3, rate_limit_requests=10**6)
        stub(address).PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
    key = f"{prefix}/breakers/bx"
    etcdctl(endpoint, "put", key, open_record("bx", 3, time.time(), "600s"))
    poll(lambda: breakers(address).get("bx", pb.Breaker()).generation == 3)

    etcdctl(endpoint, "put", key, open_record("bx", HUGE, time.time(), "600s"))
    poll(lambda: refused(address, key, "generation:"))
    held = breakers(address)["bx"]  # an INTERNAL error here before
    assert (held.state, held.generation) == (pb.BREAKER_STATE_OPEN, 3)
    etcdctl(endpoint, "put", f"{prefix}/breakers/by", open_record("by", 5, time.time(), "600s"))
    poll(lambda: breakers(address).get("by", pb.Breaker()).generation == 5)  # the others go on
    assert serving(address)


def test_an_opened_at_in_the_future_does_not_hold_the_breaker_open(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint = etcd_server.endpoint
    plane, address = control_plane(endpoint, prefix)
    spawned.append(plane)
    policy = policy_pb2.ServicePolicy(service="bf", failure_threshold=3, rate_limit_requests=10**6)
    stub(address).PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
    key = f"{prefix}/breakers/bf"
    etcdctl(endpoint, "put", key, open_record("bf", 3, time.time(), "4s"))
    poll(lambda: breakers(address).get("bf", pb.Breaker()).generation == 3)

    ten_years = time.time() + 3650 * 86400
    etcdctl(endpoint, "put", key, open_record("bf", 3, ten_years, "2s"))
    poll(lambda: refused(address, key, "opened_at:"))
    # the good record's wait ends within 4 s: the breaker then lets a probe through
    poll(lambda: breakers(address)["bf"].state == pb.BREAKER_STATE_HALF_OPEN, timeout=20)
    assert serving(address)
