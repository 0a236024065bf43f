"""A fleet-lease epoch record put by hand with a huge horizon (real etcd, a control-plane
process): refused and shown, never taken, and the leader leases on and stores a record of
its own whose horizons are the policy's."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.lease_horizons import MAX_HORIZON_SECS

from tests.server.test_hostile_numbers import refused, serving, stub
from tests.support.agents import RawAgent
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "leased"


async def leased_units(address: str) -> float:
    """The first lease of some units an agent asking for them gets (within a ceiling)."""
    wanted = pb.CapacityDemand(service=SERVICE, resource=f"{SERVICE}.requests", wanted=10, agents=1)
    async with RawAgent(address, "asking", (SERVICE,)) as agent:
        await agent.send(pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[wanted])))
        got = lambda: [r.lease.units for r in agent.received if r.HasField("lease") and r.lease.units > 0]  # noqa: E731
        await agent.wait_for(got, timeout=60)
        return got()[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("secs", "until"),
    [
        # make test: the entry refused only for ending further ahead than its horizon allows
        # (the control plane's own clock decides); each bad number is refused in
        # test_lease_horizon_record.py without a process, the other two records in make soak
        pytest.param(1e12, 2e9, marks=pytest.mark.soak),
        (MAX_HORIZON_SECS, 9e10),
        pytest.param(1e308, 1e308, marks=pytest.mark.soak),
    ],
)
def test_a_record_with_a_huge_horizon_is_refused_and_the_leader_leases_on(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], secs: float, until: float
) -> None:
    endpoint, key = etcd_server.endpoint, f"{prefix}/fleet-lease-epoch"
    hostile = {
        "epoch": 5,
        "leader": "r9",
        "until": time.time() + 2,
        "horizons": [[SERVICE, f"{SERVICE}.requests", secs, until]],
    }
    etcdctl(endpoint, "put", key, json.dumps(hostile))
    plane, address = control_plane(endpoint, prefix)
    spawned.append(plane)
    policy = policy_pb2.ServicePolicy(
        service=SERVICE,
        rate_limit_requests=100,
        rate_limit_window_secs=2.0,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=0.5, unleased_secs=5.0),
    )
    stub(address).PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
    poll(lambda: refused(address, key, "horizons[0]"))

    # the refused record still counts as a sign of earlier leases: a warm-up of the
    # policy's 5 s horizon and a few seconds, not of the horizon put by hand
    assert asyncio.run(leased_units(address)) > 0

    def horizons() -> list[list[object]] | None:
        stored = json.loads(etcdctl(endpoint, "get", key, "--print-value-only") or "{}")
        return stored.get("horizons") if stored.get("leader") != "r9" else None  # type: ignore[no-any-return]

    own = poll(horizons)
    assert {entry[2] for entry in own} == {5.0}, own  # the policy's horizon, nothing taken
    assert serving(address)
