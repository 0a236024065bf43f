"""A leader key no replica wrote (``etcdctl put <prefix>/leader garbage``: no lease, names no
leader) must not leave the fleet without a leader for ever."""

from __future__ import annotations

import json

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

PREFIX = "/hostile-leader"


def _leader(endpoint: str) -> str | None:
    text = etcdctl(endpoint, "get", f"{PREFIX}/leader", "--print-value-only").strip()
    try:
        return str(json.loads(text)["instance"])
    except (ValueError, KeyError, TypeError):
        return None


@pytest.mark.parametrize("value", ["{garbage", '{"instance": "ghost", "address": "127.0.0.1:1"}'])
def test_a_leader_key_no_replica_wrote_is_replaced(etcd: EtcdProcess, value: str) -> None:
    proc: Proc
    proc, address = control_plane(etcd.endpoint, PREFIX, "--instance-id", "r1")
    try:
        assert poll(lambda: _leader(etcd.endpoint)) == "r1"
        etcdctl(etcd.endpoint, "put", f"{PREFIX}/leader", value)  # no lease: it would never expire
        assert poll(lambda: _leader(etcd.endpoint) == "r1")
        # and it decides again: a write fenced to the leader goes through
        stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
        policy = policy_pb2.ServicePolicy(service="llm_provider", failure_threshold=2)

        def written() -> bool:
            try:
                stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
                return True
            except grpc.RpcError:
                return False

        assert poll(written)
    finally:
        proc.kill()
