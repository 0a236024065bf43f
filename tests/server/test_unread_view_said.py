"""A control plane that has not read etcd since it started says so, real processes: it is
restarted while etcd is paused, and an operator listing breakers or policies through it
must not take its empty view for the fleet's. The lists say they are incomplete (grpcurl
shows ``incomplete``; the CLI warns), a breaker or policy it does not know is "not read
yet", not "no such breaker" — and once etcd answers, everything is listed again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess, free_port
from mission_control.server.operator import EXIT_FAILED, EXIT_NOT_FOUND

from tests.server.test_probe_answer_incomplete import serve
from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.procs import ROOT, Proc

SERVICE = "unread"
CLI = [sys.executable, "-m", "mission_control.server.cli"]


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--server", address], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def listed(stub: pb_grpc.ControlPlaneServiceStub) -> pb.ListBreakersResponse:
    return stub.ListBreakers(pb.ListBreakersRequest(), timeout=5)


@pytest.mark.timeout(180)
def test_a_control_plane_that_has_not_read_etcd_says_its_lists_are_incomplete(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    spawned.append(first := serve(etcd, prefix, port))
    put_policy(address, policy_pb2.ServicePolicy(service=SERVICE, failure_threshold=3))
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.SetBreakerStateRequest(
            name=SERVICE, state=pb.BREAKER_STATE_FORCED_OPEN, reason="maintenance", create=True
        )
        stub.SetBreakerState(request, timeout=10)
        answer = listed(stub)
        assert not answer.incomplete and [b.name for b in answer.breakers] == [SERVICE]
    assert etcd.pid is not None
    os.kill(etcd.pid, signal.SIGSTOP)
    try:
        first.kill()
        spawned.append(serve(etcd, prefix, port))
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            answer = listed(stub)
            assert answer.incomplete and SERVICE not in [b.name for b in answer.breakers]
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetBreaker(pb.GetBreakerRequest(name=SERVICE), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "has not read etcd" in (raised.value.details() or "")
            policies = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5)
            assert policies.incomplete
            assert stub.GetPolicy(pb.GetPolicyRequest(service=SERVICE), timeout=5).incomplete
        shown = cli(address, "breakers", "list")
        assert shown.returncode == 0 and "has not read etcd" in shown.stderr, shown
        got = cli(address, "breakers", "get", SERVICE)
        assert got.returncode == EXIT_FAILED and "has not read etcd" in got.stderr, got
        assert "cannot reach" not in got.stderr
        asked = cli(address, "policies", "get", SERVICE)
        assert asked.returncode == EXIT_FAILED != EXIT_NOT_FOUND and "has not read etcd" in asked.stderr, (
            asked
        )
        assert "Traceback" not in asked.stderr
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        assert poll(lambda: not listed(stub).incomplete, timeout=60)
        states = {b.name: b.state for b in listed(stub).breakers}
        assert states == {SERVICE: pb.BREAKER_STATE_FORCED_OPEN}
        assert stub.GetBreaker(pb.GetBreakerRequest(name=SERVICE), timeout=5).breaker.reason == "maintenance"
    shown = cli(address, "breakers", "list")
    assert shown.returncode == 0 and "has not read etcd" not in shown.stderr and SERVICE in shown.stdout
    assert "not read" not in cli(address, "policies", "get", SERVICE).stderr
