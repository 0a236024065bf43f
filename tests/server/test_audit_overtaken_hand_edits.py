"""A change made with ``etcdctl put`` and overwritten through the API at once is still
recorded, once, as the watch delivered it: against real etcd and two real control-plane
processes, each of which sees every change."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.procs import Proc, control_plane

SERVICE = "hand_edited"
ROUNDS = 10


def _wait(check: Any, timeout: float = 30.0) -> bool:
    """Whether ``check`` held within ``timeout`` (what follows says what did not)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _put(stub: pb_grpc.ControlPlaneServiceStub, timeout_secs: float) -> None:
    policy = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=timeout_secs)
    stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=30)


def _handled(stub: pb_grpc.ControlPlaneServiceStub) -> int:
    return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=10).statistics.outside_changes


def test_hand_edits_overwritten_at_once_are_each_recorded_once(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint = etcd_server.endpoint
    servers = []
    for name in ("r1", "r2"):
        proc, server = control_plane(endpoint, prefix, "--instance-id", name)
        spawned.append(proc)
        servers.append(server)
    key = f"{prefix}/policies/{SERVICE}"
    channels = [grpc.insecure_channel(server) for server in servers]
    try:
        stubs = [pb_grpc.ControlPlaneServiceStub(channel) for channel in channels]
        _put(stubs[0], 1)
        # A claim put from outside naming changes to come keeps none of them from a record.
        now = int(json.loads(etcdctl(endpoint, "get", key, "-w", "json"))["header"]["revision"])
        forged = json.dumps({"record": "x", "revisions": list(range(now, now + 500))})
        etcdctl(endpoint, "put", f"{prefix}-audit/outside/policies/{SERVICE}", forged)
        hand: list[int] = []
        for i in range(ROUNDS):
            value = json.dumps({"service": SERVICE, "timeout_secs": 500 + i})
            put = json.loads(etcdctl(endpoint, "put", key, value, "-w", "json"))
            hand.append(int(put["header"]["revision"]))
            _put(stubs[i % 2], 10 + i)  # at once: the key and its mark move on
        # Both replicas handled every change (recorded it, or found it recorded)...
        handled = [_wait(lambda stub=stub: _handled(stub) >= ROUNDS) for stub in stubs]
        records = stubs[0].ListAuditRecords(pb.ListAuditRecordsRequest(service=SERVICE), timeout=10).records
    finally:
        for channel in channels:
            channel.close()
    # ...and each is recorded once, with the value and revision its own event carried.
    outside = sorted((r for r in records if r.identity == "etcd"), key=lambda r: r.revision)
    assert [r.revision for r in outside] == hand
    assert handled == [True, True]
    for i, record in enumerate(outside):
        assert record.action == "etcd.put"
        assert json.loads(record.new_value)["timeout_secs"] == 500 + i
        assert json.loads(record.old_value)["timeout_secs"] == (10 + i - 1 if i else 1)
        assert record.version == 2 * i + 2  # the key's etcd version after the hand edit
        assert record.provenance == "verified", record
    assert len([r for r in records if r.action == "policy.put"]) == ROUNDS + 1
    # The key's mark is written once per recorded change (what a last good value counts).
    mark = json.loads(etcdctl(endpoint, "get", f"{prefix}/audited/policies/{SERVICE}", "-w", "json"))
    assert int(mark["kvs"][0]["version"]) == 2 * ROUNDS + 1
