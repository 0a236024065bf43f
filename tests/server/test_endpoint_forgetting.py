"""Idle forgetting never ends an open endpoint breaker early, across processes: real etcd, a
control plane process and an agent. Both endpoints go idle; the CLOSED one is forgotten,
the OPEN one stays OPEN (and stored) until its wait is over."""

from __future__ import annotations

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "llm_provider"
A, B = f"{SERVICE}/openai/gpt-x", f"{SERVICE}/anthropic/claude"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=2,
    max_retries=0,
    wait_duration_secs=120,
    rate_limit_requests=10**6,
    max_endpoints=4,
    endpoint_idle_secs=1.0,
)


def down() -> None:
    raise ConnectionError("down")


def test_an_idle_open_endpoint_breaker_is_kept_while_a_closed_one_is_forgotten(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=POLICY), timeout=10)

    def breakers() -> dict[str, int]:
        return {b.name: b.state for b in stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers}

    def stored(name: str) -> str:
        return etcdctl(etcd_server.endpoint, "get", f"{prefix}/breakers/{name}", "--print-value-only")

    mc = MissionControl("forgetting", control_plane=address)
    mc.start()
    try:
        poll(lambda: mc.view.policy_of(SERVICE).max_endpoints == 4)
        failing = mc.guard(SERVICE, endpoint="openai/gpt-x")(down)
        for _ in range(2):
            with pytest.raises(MissionControlError):
                failing()
        assert mc.guard(SERVICE, endpoint="anthropic/claude")(lambda: "ok")() == "ok"
        poll(lambda: breakers().get(A) == pb.BREAKER_STATE_OPEN and B in breakers())
        poll(lambda: stored(A))
        # both idle from here; once B is forgotten, A has been idle as long
        poll(lambda: B not in breakers())
        assert breakers().get(A) == pb.BREAKER_STATE_OPEN
        assert "OPEN" in stored(A)
    finally:
        mc.close()
