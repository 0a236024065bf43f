"""Endpoint places shared fairly, across processes: real etcd, a control plane process, an
upstream and two agent processes. One agent's junk endpoint names fill the cap; the other
agent's real endpoint still gets a fleet breaker (it opens for the fleet), and what is
refused is counted in ``stats`` (the CLI shows it)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.procs import Proc, control_plane, python

SERVICE = "capsvc"
REAL = f"{SERVICE}/openai/gpt-x"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=2,
    max_retries=0,
    wait_duration_secs=60,
    rate_limit_requests=10**6,
    max_endpoints=3,
    endpoint_idle_secs=300,
)


def down() -> None:
    raise ConnectionError("down")


def test_junk_endpoints_of_one_agent_leave_room_for_another_agents_real_one(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    upstream = python("tests.support.upstream", "junk")
    spawned += [plane, upstream]
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=POLICY), timeout=10)
    junk = ",".join(f"junk{i}=127.0.0.1:{upstream.port()}" for i in range(3))
    filler = Proc([sys.executable, "-m", "tests.support.endpoint_agent", "filler", address, SERVICE, junk])
    spawned.append(filler)
    assert '"ready": true' in filler.wait_for('{"ready"', timeout=60)

    def breakers() -> dict[str, int]:
        return {b.name: b.state for b in stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers}

    for i in range(3):
        assert filler.ask(f"call junk{i} 1")["outcomes"] == {"served by junk": 1}
    poll(lambda: len([name for name in breakers() if name.startswith(f"{SERVICE}/junk")]) == 3)

    mc = MissionControl("victim", control_plane=address)
    mc.start()
    try:
        poll(lambda: mc.view.policy_of(SERVICE).max_endpoints == 3)
        failing = mc.guard(SERVICE, endpoint="openai/gpt-x")(down)
        for _ in range(2):
            with pytest.raises((ConnectionError, MissionControlError)):
                failing()
        poll(lambda: breakers().get(REAL) == pb.BREAKER_STATE_OPEN)
        # a second endpoint of the victim: the filler holds 2 places, the victim 1: refused
        assert mc.guard(SERVICE, endpoint="anthropic/claude")(lambda: "ok")() == "ok"

        def refused() -> int:
            statistics = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
            return statistics.endpoint_reports_refused_by_service.get(SERVICE, 0)

        poll(lambda: refused() >= 1)
        assert f"{SERVICE}/anthropic/claude" not in breakers()
        shown = subprocess.run(
            [sys.executable, "-m", "mission_control.server.cli", "stats", "--server", address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "endpoint reports refused past the cap, by service" in shown.stdout
        assert SERVICE in shown.stdout.split("endpoint reports refused past the cap")[1]
    finally:
        mc.close()
