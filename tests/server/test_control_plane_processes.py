"""The control plane as its own process, on a real etcd: restarts, races, etcdctl, grpcurl."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl, start_etcd
from tests.support.procs import Proc, control_plane

SERVICE = "mission_control.resilience.v1.ControlPlaneService"


def stub(address: str) -> pb_grpc.ControlPlaneServiceStub:
    return pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))


def poll(check, timeout: float = 15.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def states(address: str) -> dict[str, tuple[int, int, str]]:
    listed = stub(address).ListBreakers(pb.ListBreakersRequest(), timeout=5)
    return {b.name: (b.state, b.failures, b.reason) for b in listed.breakers}


def trip(address: str, service: str, failures: int) -> None:
    """Report failures over a Connect stream, as an agent would, until the breaker opens."""
    requests = iter(
        [
            pb.ConnectRequest(hello=pb.AgentHello(agent_id="tripper")),
            pb.ConnectRequest(
                outcomes=pb.OutcomeBatch(summaries=[pb.OutcomeSummary(service=service, failures=failures)])
            ),
        ]
    )

    def held_open():  # type: ignore[no-untyped-def]
        yield from requests
        time.sleep(5)

    call = stub(address).Connect(held_open(), timeout=10)
    for response in call:
        breaker = response.breaker if response.HasField("breaker") else None
        if breaker is not None and breaker.name == service and breaker.state == pb.BREAKER_STATE_OPEN:
            call.cancel()
            return
    raise AssertionError("breaker did not open")


def test_sigkill_and_restart_keeps_breaker_states(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    stub(address).SetBreakerState(
        pb.SetBreakerStateRequest(name="r2", state=pb.BREAKER_STATE_FORCED_OPEN, reason="ops", create=True),
        timeout=5,
    )
    trip(address, "llm_provider", failures=5)
    before = poll(lambda: (s := states(address)) and len(s) == 2 and s)
    # the transition is stored asynchronously: wait until etcd has it, then kill -9
    key = f"{prefix}/breakers/llm_provider"
    poll(lambda: "BREAKER_STATE_OPEN" in etcdctl(etcd_server.endpoint, "get", key))
    proc.kill()
    proc2, address2 = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc2)
    assert states(address2) == before
    assert before["llm_provider"][:2] == (pb.BREAKER_STATE_OPEN, 5)
    assert before["r2"] == (pb.BREAKER_STATE_FORCED_OPEN, 0, "ops")


def test_two_control_planes_racing_lose_no_update(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    first, addr1 = control_plane(etcd_server.endpoint, prefix)
    second, addr2 = control_plane(etcd_server.endpoint, prefix)
    spawned += [first, second]
    per_writer = 25
    acknowledged: list[int] = []
    errors: list[BaseException] = []

    def writer(address: str, states_cycle: list[int]) -> None:
        client = stub(address)
        try:
            for i in range(per_writer):
                request = pb.SetBreakerStateRequest(
                    name="shared", state=states_cycle[i % 2], reason=f"{address}#{i}", create=True
                )
                response = client.SetBreakerState(request, timeout=10)
                acknowledged.append(response.breaker.generation)
        except BaseException as err:
            errors.append(err)

    cycle1 = [pb.BREAKER_STATE_FORCED_OPEN, pb.BREAKER_STATE_CLOSED]
    cycle2 = [pb.BREAKER_STATE_DISABLED, pb.BREAKER_STATE_FORCED_CLOSED]
    threads = [
        threading.Thread(target=writer, args=(addr1, cycle1)),
        threading.Thread(target=writer, args=(addr2, cycle2)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    # Every acknowledged write was based on the latest stored one: generations are
    # exactly 1..N, none repeated, none skipped.
    assert sorted(acknowledged) == list(range(1, 2 * per_writer + 1))
    stored = json.loads(
        etcdctl(etcd_server.endpoint, "get", f"{prefix}/breakers/shared", "--print-value-only")
    )
    assert int(stored["generation"]) == 2 * per_writer
    # both replicas converge on the stored state
    for address in (addr1, addr2):
        poll(
            lambda a=address: (
                stub(a).GetBreaker(pb.GetBreakerRequest(name="shared"), timeout=5).breaker.generation
                == 2 * per_writer
            )
        )


def test_etcdctl_put_reaches_agents_and_garbage_changes_nothing(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    updates: list[pb.ConnectResponse] = []
    stop = threading.Event()

    def agent() -> None:
        def requests():  # type: ignore[no-untyped-def]
            yield pb.ConnectRequest(hello=pb.AgentHello(agent_id="watcher"))
            stop.wait(30)

        call = stub(address).Connect(requests(), timeout=30)
        try:
            for response in call:
                updates.append(response)
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=agent, daemon=True)
    thread.start()
    poll(lambda: any(u.HasField("snapshot") for u in updates))
    key = f"{prefix}/policies/storage_backend"
    etcdctl(
        etcd_server.endpoint,
        "put",
        key,
        json.dumps({"service": "storage_backend", "timeout_secs": 2.5, "max_retries": 1}),
    )

    def pushed_policy():  # type: ignore[no-untyped-def]
        return [u.policy for u in updates if u.HasField("policy")]

    got = poll(pushed_policy)
    assert got[-1].service == "storage_backend"
    assert got[-1].policy.timeout_secs == 2.5 and got[-1].policy.max_retries == 1
    assert got[-1].policy.failure_threshold == 3  # the seed preset fills what etcdctl left out

    etcdctl(etcd_server.endpoint, "put", key, "{this is not a policy")
    etcdctl(
        etcd_server.endpoint,
        "put",
        key,
        json.dumps({"service": "storage_backend", "timeout_secs": -4}),
    )

    def reported():  # type: ignore[no-untyped-def]
        s = stub(address).GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
        return s if s.config_reloads_failed >= 2 else None

    stats = poll(reported)
    assert [e.key for e in stats.config_errors] == [key, key]
    assert "timeout_secs: must be > 0" in stats.config_errors[1].error
    policy = stub(address).GetPolicy(pb.GetPolicyRequest(service="storage_backend"), timeout=5)
    assert policy.policy.timeout_secs == 2.5  # the last good one stays
    assert len(pushed_policy()) == 1  # agents were never sent the bad values
    stop.set()


def _grpcurl() -> str:
    return str(Path(sys.executable).with_name("grpcurl"))


def test_grpcurl_list_describe_call_and_health(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)

    def grpcurl(*args: str) -> str:
        result = subprocess.run([_grpcurl(), "-plaintext", *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    services = grpcurl(address, "list").split()
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(services)
    described = grpcurl(address, "describe", SERVICE)
    assert "rpc Connect ( stream" in described and "rpc SetBreakerState" in described
    grpcurl(
        "-d",
        json.dumps(
            {"name": "llm_provider", "state": "BREAKER_STATE_FORCED_OPEN", "reason": "test", "create": True}
        ),
        address,
        f"{SERVICE}/SetBreakerState",
    )
    listed = json.loads(grpcurl(address, f"{SERVICE}/ListBreakers"))
    assert listed["breakers"][0]["name"] == "llm_provider"
    assert listed["breakers"][0]["state"] == "BREAKER_STATE_FORCED_OPEN"
    assert json.loads(grpcurl(address, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    checked = grpcurl("-d", json.dumps({"service": SERVICE}), address, "grpc.health.v1.Health/Check")
    assert json.loads(checked) == {"status": "SERVING"}


def test_health_follows_etcd(tmp_path: Path, spawned: list[Proc]) -> None:
    etcd = start_etcd(tmp_path)
    try:
        proc, address = control_plane(etcd.endpoint, "/mc")
        spawned.append(proc)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))

        def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return health.Check(request, timeout=5).status

        assert status(SERVICE) == health_pb2.HealthCheckResponse.SERVING
        stub(address).SetBreakerState(
            pb.SetBreakerStateRequest(
                name="keep", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True
            ),
            timeout=5,
        )
        etcd.stop()
        poll(lambda: status(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert status("") == health_pb2.HealthCheckResponse.SERVING  # the process still serves
        assert states(address)["keep"][0] == pb.BREAKER_STATE_FORCED_OPEN  # from memory
        with pytest.raises(grpc.RpcError) as caught:
            stub(address).SetBreakerState(
                pb.SetBreakerStateRequest(name="keep", state=pb.BREAKER_STATE_CLOSED, create=True), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # StorageFailure: not acknowledged
        etcd.start()
        poll(lambda: status(SERVICE) == health_pb2.HealthCheckResponse.SERVING, timeout=30)
        assert states(address)["keep"][0] == pb.BREAKER_STATE_FORCED_OPEN
    finally:
        etcd.stop()


def test_embedded_etcd_and_graceful_shutdown(tmp_path: Path, spawned: list[Proc]) -> None:
    def serve() -> tuple[Proc, str, str]:
        proc = Proc(
            [sys.executable, "-m", "mission_control.server.cli", "serve",
             "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")]
        )  # fmt: skip
        spawned.append(proc)
        etcd_line = proc.wait_for("mission-control: embedded etcd at ", timeout=60)
        address = proc.wait_for("mission-control: serving on ", timeout=60).split()[3]
        return proc, etcd_line.split()[4], address

    proc, etcd_endpoint, address = serve()
    stub(address).SetBreakerState(
        pb.SetBreakerStateRequest(
            name="kept", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True
        ),
        timeout=5,
    )
    proc.stop()  # SIGTERM: drain, stop serving, stop the embedded etcd
    assert proc.popen.returncode == 0
    assert "mission-control: shutting down" in proc.wait_for("mission-control: shutting down")
    with pytest.raises(AssertionError):
        etcdctl(etcd_endpoint, "endpoint", "health", "--command-timeout=1s")
    # the data directory is kept: a new start finds the state again
    proc2, _, address2 = serve()
    assert states(address2)["kept"][0] == pb.BREAKER_STATE_FORCED_OPEN
    proc2.stop()
    assert proc2.popen.returncode == 0
