"""Fleet state stays true under store faults: a control plane in its own process, a real
etcd stopped, restarted, wiped or fed garbage under it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl, start_etcd
from tests.support.procs import Proc, control_plane

PREFIX = "/faults"
LEADER_TTL_SECS = 3  # the control plane's default leader lease


def poll(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = start_etcd(tmp_path)
    yield proc
    proc.stop()


def stored(etcd: EtcdProcess, key: str) -> dict[str, Any] | None:
    text = etcdctl(etcd.endpoint, "get", f"{PREFIX}/{key}", "--print-value-only").strip()
    return json.loads(text) if text else None


def stored_state(etcd: EtcdProcess, name: str) -> str | None:
    found = stored(etcd, f"breakers/{name}")
    return found.get("state") if found else None


class Reporter:
    """One agent stream that reports outcomes and stays open."""

    def __init__(self, address: str, agent_id: str = "reporter") -> None:
        self.stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
        self.agent_id = agent_id

    def fail(self, service: str, failures: int) -> None:
        summary = pb.OutcomeSummary(service=service, failures=failures)

        def requests() -> Iterator[pb.ConnectRequest]:
            yield pb.ConnectRequest(hello=pb.AgentHello(agent_id=self.agent_id))
            yield pb.ConnectRequest(outcomes=pb.OutcomeBatch(summaries=[summary], sequence=1))
            time.sleep(1)

        call = self.stub.Connect(requests(), timeout=30)
        for response in call:
            if response.HasField("outcome_ack"):
                break
        call.cancel()


def breaker_state(stub: pb_grpc.ControlPlaneServiceStub, name: str) -> int:
    try:
        return int(stub.GetBreaker(pb.GetBreakerRequest(name=name), timeout=5).breaker.state)
    except grpc.RpcError:
        return pb.BREAKER_STATE_UNSPECIFIED


def put_policy(stub: pb_grpc.ControlPlaneServiceStub, service: str, **fields: Any) -> None:
    policy = policy_pb2.ServicePolicy(service=service, **fields)
    stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)


def pause(etcd: EtcdProcess) -> Callable[[], None]:
    """Freeze etcd (SIGSTOP); returns what thaws it. Its clock runs on: leases expire."""
    proc = etcd._proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    return lambda: proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_an_open_decided_while_etcd_is_down_is_stored_when_it_returns(
    etcd: EtcdProcess, spawned: list[Proc], outage: str
) -> None:
    plane, address = control_plane(etcd.endpoint, PREFIX)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    for service in ("fresh", "stored"):
        put_policy(stub, service, failure_threshold=3, wait_duration_secs=600)
    stub.SetBreakerState(pb.SetBreakerStateRequest(name="stored", state=pb.BREAKER_STATE_CLOSED), timeout=10)
    assert stored_state(etcd, "stored") == "BREAKER_STATE_CLOSED"
    assert stored_state(etcd, "fresh") is None

    # stopped: etcd restores the leader lease on restart; paused: the lease expires, the
    # leader key goes and the control plane's first write after the outage is fenced
    resume = etcd.start if outage == "stopped" else pause(etcd)
    if outage == "stopped":
        etcd.stop()
    reporter = Reporter(address)
    reporter.fail("fresh", 3)
    reporter.fail("stored", 3)
    for name in ("fresh", "stored"):
        poll(lambda n=name: breaker_state(stub, n) == pb.BREAKER_STATE_OPEN)
    time.sleep(LEADER_TTL_SECS * 1.5)  # the outage outlasts the leader lease
    resume()

    for name in ("fresh", "stored"):  # written when etcd returned
        poll(lambda n=name: stored_state(etcd, n) == "BREAKER_STATE_OPEN")
    # and still what the control plane holds, not reset by a failed fence
    assert breaker_state(stub, "fresh") == breaker_state(stub, "stored") == pb.BREAKER_STATE_OPEN
