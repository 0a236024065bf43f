"""A window too short to judge anything, across processes: real etcd, a control plane
process and an agent. The control plane refuses it from an operator (naming the field) and
from the store (etcd garbage, or an older release's value), and the agent's outcomes for
that service never stop the control plane from counting its other services."""

from __future__ import annotations

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

TINY = '{"service": "tiny", "slow_call": {"duration_threshold_secs": 0.05, "rate_threshold": 0.5,'
TINY += ' "minimum_calls": 1, "window_secs": 1e-320}, "failure_rate": {"threshold": 0.5,'
TINY += ' "minimum_calls": 1, "window_secs": 1e-320}}'
OTHER = policy_pb2.ServicePolicy(
    service="other", failure_threshold=3, max_retries=0, wait_duration_secs=60, rate_limit_requests=10**6
)


def down() -> None:
    raise ConnectionError("down")


def test_a_tiny_window_is_refused_and_never_stops_the_other_services(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    tiny = policy_pb2.ServicePolicy(
        service="tiny", slow_call=policy_pb2.SlowCallPolicy(window_secs=1e-320, minimum_calls=1)
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.PutPolicy(pb.PutPolicyRequest(policy=tiny), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "slow_call.window_secs" in str(refused.value.details())
    etcdctl(etcd_server.endpoint, "put", f"{prefix}/policies/tiny", input_text=TINY)
    stub.PutPolicy(pb.PutPolicyRequest(policy=OTHER), timeout=10)

    def load_errors() -> list[str]:
        statistics = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
        return [f"{e.key}: {e.error}" for e in statistics.config_errors]

    errors = poll(lambda: [e for e in load_errors() if e.startswith(f"{prefix}/policies/tiny")])
    assert "window_secs" in errors[0] and "0.1" in errors[0]

    mc = MissionControl("bad-window", control_plane=address)
    mc.start()
    try:
        poll(lambda: mc.view.policy_of("other").failure_threshold == 3)
        assert mc.guard("tiny")(lambda: "ok")() == "ok"
        failing = mc.guard("other")(down)

        def other_state() -> int:
            listed = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers
            return {b.name: b.state for b in listed}.get("other", 0)

        for _ in range(3):
            with pytest.raises(ConnectionError):
                failing()
        poll(lambda: other_state() == pb.BREAKER_STATE_OPEN)
    finally:
        mc.close()
