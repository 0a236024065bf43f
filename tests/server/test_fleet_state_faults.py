"""Fleet state stays true under store faults: a control plane in its own process, a real
etcd stopped, restarted, wiped or fed garbage under it."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.etcd import etcdctl
from tests.support.procs import Proc, agent, control_plane, python

PREFIX = "/faults"
SERVICE_NAME = "mission_control.resilience.v1.ControlPlaneService"
LEADER_TTL_SECS = 3  # the control plane's default leader lease


def poll(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


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
    stub.SetBreakerState(
        pb.SetBreakerStateRequest(name="stored", state=pb.BREAKER_STATE_CLOSED, create=True), timeout=10
    )
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


def stats(stub: pb_grpc.ControlPlaneServiceStub) -> pb.ErrorStatistics:
    return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics


def serving(address: str) -> bool:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    return health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_a_malformed_breaker_record_is_refused_and_never_stops_the_sync(
    etcd: EtcdProcess, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd.endpoint, PREFIX)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    etcdctl(etcd.endpoint, "put", f"{PREFIX}/breakers/bx", "{garbage")
    etcdctl(etcd.endpoint, "put", f"{PREFIX}/policies/after", '{"service": "after", "failure_threshold": 9}')

    def policy(stub: pb_grpc.ControlPlaneServiceStub) -> int:
        return stub.GetPolicy(pb.GetPolicyRequest(service="after"), timeout=5).policy.failure_threshold

    poll(lambda: policy(stub) == 9)  # later changes still apply
    found = stats(stub)
    assert found.config_reloads_failed >= 1
    assert any(e.key == f"{PREFIX}/breakers/bx" for e in found.config_errors), found.config_errors
    assert serving(address)
    # a control plane started with the broken key present loads everything else
    plane.kill()
    plane, address = control_plane(etcd.endpoint, PREFIX)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    assert policy(stub) == 9
    assert any(e.key == f"{PREFIX}/breakers/bx" for e in stats(stub).config_errors)
    assert serving(address)
    # an operator's write replaces the broken record
    forced = pb.SetBreakerStateRequest(
        name="bx", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True
    )
    stub.SetBreakerState(forced, timeout=10)
    assert stored_state(etcd, "bx") == "BREAKER_STATE_FORCED_OPEN"


def test_a_bad_policy_value_never_replaces_the_good_one_across_restarts(
    etcd: EtcdProcess, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd.endpoint, PREFIX)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    put_policy(stub, "kept", failure_threshold=7)
    etcdctl(etcd.endpoint, "put", f"{PREFIX}/policies/kept", '{"service": "kept", "failure_threshold": -1}')
    etcdctl(etcd.endpoint, "put", f"{PREFIX}/policies/kept", "{garbage")
    poll(lambda: stats(stub).config_reloads_failed >= 2)
    for restart in range(2):
        if restart:
            plane.kill()
            plane, address = control_plane(etcd.endpoint, PREFIX)
            spawned.append(plane)
            stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
        got = stub.GetPolicy(pb.GetPolicyRequest(service="kept"), timeout=5)
        assert got.policy.failure_threshold == 7, restart
        assert got.revision > 0
        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies
        assert [p.failure_threshold for p in listed if p.service == "kept"] == [7]
        errors = [e.error for e in stats(stub).config_errors if e.key == f"{PREFIX}/policies/kept"]
        assert any("last good value" in e for e in errors), errors


async def test_a_background_task_that_dies_is_logged_and_takes_health_down(
    control_plane: RunningControlPlane, etcd_server: EtcdProcess, caplog: pytest.LogCaptureFixture
) -> None:
    plane = control_plane.plane
    health: list[bool] = []
    plane.health_listeners.append(health.append)

    def broken(key: str, value: bytes | None, revision: int) -> bool:
        raise RuntimeError("a defect in applying a change")

    plane.sync.apply = broken  # type: ignore[method-assign]
    etcdctl(etcd_server.endpoint, "put", f"{plane.prefix}/policies/x", '{"service": "x"}')
    deadline = time.monotonic() + 30
    while not plane.failed_tasks:
        assert time.monotonic() < deadline, "the sync task did not end"
        await asyncio.sleep(0.05)
    assert plane.failed_tasks == ["StoreSync.run"]
    assert health == [False] and not plane.healthy
    assert "background task StoreSync.run ended" in caplog.text


def serve_at(etcd: EtcdProcess, address: str) -> Proc:
    """A control plane on a fixed address (what a supervisor restarting it does)."""
    args = ["serve", "--listen", address, "--etcd", etcd.endpoint, "--etcd-prefix", PREFIX]
    proc = Proc([sys.executable, "-m", "mission_control.server.cli", *args])
    proc.wait_for("mission-control: serving on ", timeout=60)
    return proc


@pytest.fixture
def upstream(spawned: list[Proc]) -> str:
    proc = python("tests.support.upstream", "llm")
    spawned.append(proc)
    return f"127.0.0.1:{proc.port()}"


def test_a_fleet_open_stays_in_force_without_a_control_plane_and_a_snapshot_replaces_it(
    etcd: EtcdProcess, spawned: list[Proc], upstream: str
) -> None:
    address = f"127.0.0.1:{free_port()}"
    spawned.append(plane := serve_at(etcd, address))
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    put_policy(stub, "llm_provider", failure_threshold=3, wait_duration_secs=600, rate_limit_requests=10**6)
    spawned.append(a := agent("agent-a", address, upstream, "llm_provider"))
    Reporter(address).fail("llm_provider", 3)  # another agent trips the fleet breaker
    poll(lambda: a.ask("state")["state"] == "OPEN")
    poll(lambda: stored_state(etcd, "llm_provider") == "BREAKER_STATE_OPEN")

    plane.kill()  # fail static: the fleet OPEN keeps its 600 s without a control plane
    poll(lambda: not a.ask("stats")["connected"])
    assert a.ask("call 1")["outcomes"] == {"CircuitBreakerOpen": 1}
    spawned.append(plane := serve_at(etcd, address))  # restarted: still OPEN (it is stored)
    poll(lambda: a.ask("stats")["connected"])
    assert a.ask("call 1")["outcomes"] == {"CircuitBreakerOpen": 1}

    plane.kill()  # a control plane that no longer has the breaker ends the agent's OPEN
    etcdctl(etcd.endpoint, "del", f"{PREFIX}/breakers/llm_provider")
    spawned.append(serve_at(etcd, address))
    poll(lambda: a.ask("call 1")["outcomes"] == {"ok": 1})


def test_a_control_plane_started_while_etcd_is_down_never_replaces_what_agents_hold(
    etcd: EtcdProcess, spawned: list[Proc], upstream: str
) -> None:
    address = f"127.0.0.1:{free_port()}"
    spawned.append(plane := serve_at(etcd, address))
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    put_policy(stub, "llm_provider", timeout_secs=7, rate_limit_requests=10**6)
    spawned.append(a := agent("agent-a", address, upstream, "llm_provider"))
    poll(lambda: a.ask("policy")["timeout_secs"] == 7)

    plane.kill()
    etcd.stop()
    spawned.append(serve_at(etcd, address))
    poll(lambda: a.ask("stats")["connected"])  # connected to a control plane that knows nothing
    assert a.ask("policy")["timeout_secs"] == 7
    assert a.ask("call 20")["outcomes"] == {"ok": 20}
    etcd.start()
    poll(lambda: serving(address))
    assert a.ask("policy")["timeout_secs"] == 7


def test_an_etcd_wiped_and_restarted_empty_is_noticed_and_restored(
    etcd: EtcdProcess, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd.endpoint, PREFIX)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    for threshold in range(20, 7, -1):  # history: the store's revision is well past a new one's
        put_policy(stub, "kept", failure_threshold=threshold)
    stub.SetBreakerState(
        pb.SetBreakerStateRequest(name="ops", state=pb.BREAKER_STATE_FORCED_OPEN, reason="held", create=True),
        timeout=10,
    )
    etcd.stop()
    shutil.rmtree(etcd.data_dir)
    etcd.start()  # same address, no data

    poll(lambda: stored(etcd, "policies/kept") is not None)  # the leader restores what it holds
    assert stored(etcd, "policies/kept")["failure_threshold"] == 8  # type: ignore[index]
    poll(lambda: stored_state(etcd, "ops") == "BREAKER_STATE_FORCED_OPEN")
    # and follows the new store: a put at a low revision is applied
    etcdctl(etcd.endpoint, "put", f"{PREFIX}/policies/new", '{"service": "new", "failure_threshold": 4}')
    poll(lambda: stub.GetPolicy(pb.GetPolicyRequest(service="new"), timeout=5).policy.failure_threshold == 4)
    poll(lambda: serving(address))
    assert breaker_state(stub, "ops") == pb.BREAKER_STATE_FORCED_OPEN


def leader_at(etcd: EtcdProcess) -> dict[str, str] | None:
    return stored(etcd, "leader")


def test_a_restart_within_the_leader_lease_on_the_same_address_counts_each_failure_once(
    etcd: EtcdProcess, spawned: list[Proc]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    spawned.append(plane := serve_at(etcd, address))
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    put_policy(stub, "svc", failure_threshold=5, wait_duration_secs=600)
    reset = pb.SetBreakerStateRequest(name="svc", state=pb.BREAKER_STATE_CLOSED, create=True)
    stub.SetBreakerState(reset, timeout=10)

    def counted() -> int:
        try:
            found = stub.GetBreaker(pb.GetBreakerRequest(name="svc"), timeout=5).breaker
        except grpc.RpcError:
            return 0
        return int(found.consecutive_failures) if found.state == pb.BREAKER_STATE_CLOSED else -1

    for restart in range(3):
        old = poll(lambda: (found := leader_at(etcd)) and found["address"] == address and found)
        plane.kill()  # SIGKILL: its leader key stays until the lease runs out
        spawned.append(plane := serve_at(etcd, address))  # at once, on the same address
        Reporter(address, f"reporter-{restart}").fail("svc", 4)  # one below the threshold
        poll(lambda: counted() != 0)
        gone = old["instance"]
        poll(lambda gone=gone: (found := leader_at(etcd)) and found["instance"] != gone)
        assert counted() == 4, f"restart {restart}: {counted()} failures counted of 4"
        found = stats(stub)  # nothing came back through a relay to itself
        assert dict(found.errors_by_agent) == {f"reporter-{restart}": 4}, restart
        Reporter(address, f"reporter-{restart}").fail("svc", 1)  # the fifth opens it
        poll(lambda: breaker_state(stub, "svc") == pb.BREAKER_STATE_OPEN)
        stub.SetBreakerState(reset, timeout=10)
