"""A replica that leads before its first load of the store grants no probe permit.

Wild-clock schedule 204: a replica restarted while cut off from etcd serves its agents on the
default policies. Once etcd answers, it wins the leadership at once while its load waits out
the retry backoff (up to 2 s); meanwhile its agents' failures trip the breaker under the
default threshold, the compare-and-swap finds the store's OPEN (its wait long over), it goes
HALF_OPEN — and its probes counted by the defaults' ``success_threshold`` (3) while the
fleet's policy says 1: after one probe succeeded, two more went out at once. Now a replica
campaigns only once it has loaded the store, and a leader that has not loaded grants nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from . import vloop
from . import world as world_module
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import EPOCH, Agent

_KEY = "/mission-control/v1/breakers/svc-a"


def _old_open(world: World) -> bytes:
    """svc-a OPEN since long ago with a 1-s wait: whoever reads it may half-open it at once."""
    record = pb.Breaker(
        name="svc-a", state=pb.BREAKER_STATE_OPEN, generation=1, failures=3, reason="3 consecutive failures"
    )
    record.opened_at.FromNanoseconds(int((EPOCH + world.now - 60.0) * 1e9))
    record.changed_at.CopyFrom(record.opened_at)
    record.open_remaining.FromNanoseconds(10**9)
    return json_format.MessageToJson(record, preserving_proto_field_name=True).encode()


async def _leads_unloaded(world: World) -> list[tuple[float, bool]]:
    """Runs the schedule; returns each permit of svc-a granted: (when, whether the granting
    replica had loaded the store by then)."""
    world.success_thresholds["svc-a"] = 1
    fleet = ServicePolicy(
        service="svc-a", failure_threshold=8, success_threshold=1, wait_duration_secs=1.0, timeout_secs=2.0
    )
    for service in SERVICES:
        chosen = fleet if service == "svc-a" else policy(service, world.rng)
        world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
    world.etcd.put_raw(_KEY, _old_open(world))
    world.cut_from_etcd.add("cp0")
    replica = await world.start_replica("cp0")
    plane = replica.plane
    grants: list[tuple[float, bool]] = []
    plane.breakers.grant_listeners.append(
        lambda _, grant: (
            grants.append((world.now, plane.sync.loaded.is_set())) if grant.service == "svc-a" else None
        )
    )
    for name in ("agent-0", "agent-1"):
        world.agents.append(Agent(world, name, ("svc-a",)))
    await _until(world, lambda: all(a.view.connected for a in world.agents), "agents connected")
    world.recorder.start()
    await asyncio.sleep(5.3)  # just after a retry of the load: the next is 2 s away
    world.log("cp0 reaches etcd; svc-a fails")
    world.cut_from_etcd.discard("cp0")
    replica.store.cut = False
    world.store_trouble("cp0")
    world.failing["svc-a"] = True
    await _until(world, lambda: plane.leading, "cp0 leads")
    # (a replica now campaigns only once it has loaded the store, and a leader that has not
    # grants nothing: either closes the gap this schedule is about)
    tripped = lambda: plane.breakers.get("svc-a").state is not BreakerState.CLOSED  # noqa: E731
    await _until(world, tripped, "cp0 trips svc-a")
    world.failing["svc-a"] = False  # the probes succeed
    await _until(world, lambda: plane.sync.loaded.is_set(), "cp0 loads the store")
    await _until(world, lambda: plane.breakers.get("svc-a").state is BreakerState.CLOSED, "svc-a closes")
    await asyncio.sleep(1.0)
    world.recorder.stop()
    return grants


def test_a_leader_grants_no_permit_before_it_has_read_the_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, cp0 granted a permit before its load, and after its probe succeeded two more
    at once: "2 probes of svc-a gen 2 in flight (success_threshold 1)"."""
    monkeypatch.setattr(world_module, "probe_secs", lambda draw: 0.3)

    async def main() -> tuple[World, list[tuple[float, bool]]]:
        world = World(0)
        return world, await _leads_unloaded(world)

    with quiet_logs():
        world, grants = vloop.run(main())
    assert grants, "no permit of svc-a was granted"
    assert [at for at, loaded in grants if not loaded] == []  # before: granted before the load
    assert [v for v in world.result.violations if "I3:" in v] == []
