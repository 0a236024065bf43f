"""What a control plane serves of policies, candidates and audit records (for the tests of
etcd restored from a backup)."""

from __future__ import annotations

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.follower_write import POLICY


def _stub(channel: grpc.Channel) -> pb_grpc.ControlPlaneServiceStub:
    return pb_grpc.ControlPlaneServiceStub(channel)


def with_timeout(secs: float, service: str = POLICY.service) -> policy_pb2.ServicePolicy:
    policy = policy_pb2.ServicePolicy()
    policy.CopyFrom(POLICY)
    policy.service, policy.timeout_secs = service, secs
    return policy


def services(address: str) -> dict[str, float]:
    """service -> timeout of each policy the control plane at ``address`` holds."""
    with grpc.insecure_channel(address) as channel:
        found = _stub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=10)
    return {p.service: p.timeout_secs for p in found.policies}


def candidates(address: str) -> dict[str, float]:
    """service -> timeout of each candidate (shadow) policy held at ``address``."""
    with grpc.insecure_channel(address) as channel:
        found = _stub(channel).ListShadowPolicies(pb.ListShadowPoliciesRequest(), timeout=10)
    return {p.service: p.timeout_secs for p in found.policies}


def put_candidate(address: str, policy: policy_pb2.ServicePolicy) -> None:
    with grpc.insecure_channel(address) as channel:
        request = pb.PutShadowPolicyRequest(policy=policy, reason="try it")
        _stub(channel).PutShadowPolicy(request, timeout=10)


def delete_policy(address: str, service: str) -> None:
    with grpc.insecure_channel(address) as channel:
        _stub(channel).DeletePolicy(pb.DeletePolicyRequest(service=service, reason="retired"), timeout=10)


def audit(address: str, service: str) -> list[pb.AuditRecord]:
    with grpc.insecure_channel(address) as channel:
        request = pb.ListAuditRecordsRequest(service=service)
        return list(_stub(channel).ListAuditRecords(request, timeout=10).records)
