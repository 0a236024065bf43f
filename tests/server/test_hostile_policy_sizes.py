"""Policies of hostile size sent to a real control plane process: refused at once with
every bad field named, nothing stored, and the control plane keeps answering."""

from __future__ import annotations

import grpc
import pytest
from mission_control.client.config import MAX_POLICY_BYTES
from mission_control.client.errors import ConfigurationError
from mission_control.client.status import error_from_rpc_error
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.procs import Proc, control_plane

#: About 1 MB of distinct fallbacks: validated pairwise, this took hours.
FALLBACKS = [f"fallback-{i:07d}" for i in range(60_000)]


def _violations(err: grpc.RpcError) -> dict[str, str]:
    error = error_from_rpc_error(err)
    assert isinstance(error, ConfigurationError), err
    return dict(error.violations)


def _hostile() -> policy_pb2.ServicePolicy:
    policy = policy_pb2.ServicePolicy(service="llm_provider", fallbacks=FALLBACKS)
    policy.record_errors.extend(["E" * 300] * 3)
    return policy


def test_a_megabyte_candidate_is_refused_naming_every_bad_field(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    policy = _hostile()
    assert policy.ByteSize() > 4 * MAX_POLICY_BYTES
    options = [("grpc.max_send_message_length", 8 << 20)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        config = policy_pb2.ErrorHandlingConfig()
        config.service_specific["llm_provider"].CopyFrom(policy)
        calls = [
            (stub.PutShadowPolicy, pb.PutShadowPolicyRequest(policy=policy)),
            (stub.PutPolicy, pb.PutPolicyRequest(policy=policy)),
            (stub.ImportConfig, pb.ImportConfigRequest(config=config)),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                method(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            found = _violations(caught.value)
            fields = {f.rpartition(".")[2] for f in found}
            assert {"fallbacks", "record_errors[0]", "record_errors[2]"} <= fields, found
            assert "at most 32 entries (has 60000)" in str(found)
        assert "policy" in _violations_of_put(stub, policy)  # the size, first
        # nothing stored, and the control plane answers
        assert not stub.ListShadowPolicies(pb.ListShadowPoliciesRequest(), timeout=10).policies
    stored = etcdctl(etcd_server.endpoint, "get", f"{prefix}/", "--prefix", "--keys-only")
    assert "llm_provider" not in stored


def _violations_of_put(
    stub: pb_grpc.ControlPlaneServiceStub, policy: policy_pb2.ServicePolicy
) -> dict[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=30)
    return _violations(caught.value)
