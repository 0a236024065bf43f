"""TLS, mutual TLS, tokens, per-agent identity and input limits, against real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.auth import AccessPolicy
from mission_control.server.etcd_process import EtcdProcess

from tests.support.certs import Authority
from tests.support.procs import Proc, control_plane

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "admin-token-9f8e7d"
AGENT_TOKEN = "agent-a-token-1c2b3a"


def force_open(stub: pb_grpc.ControlPlaneServiceStub, name: str, **kw: object) -> pb.SetBreakerStateResponse:
    request = pb.SetBreakerStateRequest(
        name=name, state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True
    )
    return stub.SetBreakerState(request, timeout=10, **kw)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = Authority(tmp_path / "pki", "fleet-ca")
    rogue = Authority(tmp_path / "rogue", "rogue-ca")
    return {
        "ca": ca,
        "server": ca.issue("control-plane", server=True),
        "operator": ca.issue("operator-1"),
        "agent": ca.issue("agent-a"),
        "rogue": rogue.issue("operator-1"),
    }


def secure_stub(pki: dict[str, object], address: str, who: str | None) -> pb_grpc.ControlPlaneServiceStub:
    ca = pki["ca"].path.read_bytes()  # type: ignore[attr-defined]
    key = cert = None
    if who is not None:
        cert, key = pki[who].read()  # type: ignore[attr-defined]
    channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))
    return pb_grpc.ControlPlaneServiceStub(channel)


def test_mutual_tls_reads_writes_and_agent_identity(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], pki: dict[str, object]
) -> None:
    server = pki["server"]
    plane, address = control_plane(
        etcd_server.endpoint, prefix,
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),  # type: ignore[attr-defined]
        "--tls-client-ca", str(pki["ca"].path),  # type: ignore[attr-defined]
        "--admin-identity", "operator-1",
    )  # fmt: skip
    spawned.append(plane)
    # no TLS, or no client certificate, or one from another CA: no connection at all
    plain = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    assert (
        code_of(lambda: plain.ListBreakers(pb.ListBreakersRequest(), timeout=5))
        == grpc.StatusCode.UNAVAILABLE
    )
    anonymous = secure_stub(pki, address, None)
    assert (
        code_of(lambda: anonymous.ListBreakers(pb.ListBreakersRequest(), timeout=5))
        == grpc.StatusCode.UNAVAILABLE
    )
    rogue = secure_stub(pki, address, "rogue")
    assert (
        code_of(lambda: rogue.ListBreakers(pb.ListBreakersRequest(), timeout=5))
        == grpc.StatusCode.UNAVAILABLE
    )
    # an agent's certificate may read but not write
    agent_stub = secure_stub(pki, address, "agent")
    assert agent_stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers == []
    assert code_of(lambda: force_open(agent_stub, "llm")) == grpc.StatusCode.PERMISSION_DENIED
    assert agent_stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers == []  # nothing changed
    # the operator's may
    assert (
        force_open(secure_stub(pki, address, "operator"), "llm").breaker.state == pb.BREAKER_STATE_FORCED_OPEN
    )
    # a wrong token beside the operator's certificate is refused, and changes nothing
    wrong = (("authorization", "Bearer not-an-admin-token"),)
    operator = secure_stub(pki, address, "operator")
    assert code_of(lambda: force_open(operator, "llm-2", metadata=wrong)) == grpc.StatusCode.PERMISSION_DENIED
    assert [b.name for b in operator.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers] == ["llm"]

    # an agent reports only under its own name
    def connect(agent_id: str) -> grpc.StatusCode | str:
        requests = iter([pb.ConnectRequest(hello=pb.AgentHello(agent_id=agent_id))])
        try:
            for response in agent_stub.Connect(requests, timeout=5):
                return response.WhichOneof("message")
        except grpc.RpcError as err:
            return err.code()
        return "ended"

    assert connect("agent-a") == "snapshot"
    assert connect("agent-b") == grpc.StatusCode.PERMISSION_DENIED
    # a real agent with its certificate connects and sees the forced state
    cert, key = pki["agent"].read()  # type: ignore[attr-defined]
    creds = grpc.ssl_channel_credentials(pki["ca"].path.read_bytes(), key, cert)  # type: ignore[attr-defined]
    with MissionControl("agent-a", control_plane=address, credentials=creds) as mc:
        assert mc.wait_connected(20)
        fleet = mc.view.get("llm").fleet
        assert fleet is not None and fleet.state.name == "FORCED_OPEN"
    # the CLI over mutual TLS: the operator's certificate writes, the agent's is refused
    tls = ["--tls-ca", str(pki["ca"].path)]  # type: ignore[attr-defined]

    def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        pair = pki[who]
        return subprocess.run(
            [sys.executable, "-m", "mission_control.server.cli", *args, "--server", address, *tls,
             "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)],  # type: ignore[attr-defined]
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    assert cli("operator", "breakers", "reset", "llm").returncode == 0
    denied = cli("agent", "breakers", "force-open", "--reason", "test", "--create", "llm")
    assert denied.returncode == 7 and "not allowed" in denied.stderr


def test_tokens_for_admins_and_agents(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    admins = tmp_path / "admins"
    admins.write_text(f"# operators\n{ADMIN_TOKEN}\n")
    agents = tmp_path / "agents"
    agents.write_text(f"agent-a {AGENT_TOKEN}\n")
    plane, address = control_plane(
        etcd_server.endpoint, prefix, "--admin-tokens-file", str(admins), "--agent-tokens-file", str(agents)
    )
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    assert code_of(lambda: force_open(stub, "x")) == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer not-the-token"),)
    assert code_of(lambda: force_open(stub, "x", metadata=wrong)) == grpc.StatusCode.PERMISSION_DENIED
    policy = pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service="x", timeout_secs=3))
    assert (
        code_of(lambda: stub.PutPolicy(policy, timeout=5, metadata=wrong))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5).policies == []  # nothing written
    right = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    assert force_open(stub, "x", metadata=right).breaker.state == pb.BREAKER_STATE_FORCED_OPEN
    # agents: their own token, under their own name
    with MissionControl("agent-a", control_plane=address, token=AGENT_TOKEN) as mc:
        assert mc.wait_connected(20)
    with MissionControl("agent-b", control_plane=address, token=AGENT_TOKEN) as impostor:
        assert not impostor.wait_connected(2)
    with MissionControl("agent-a", control_plane=address) as tokenless:
        assert not tokenless.wait_connected(2)
    # the CLI with the token (from the environment)
    env = {**__import__("os").environ, "MISSION_CONTROL_TOKEN": ADMIN_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "mission_control.server.cli", "breakers", "reset", "x", "--server", address],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out, err = capfd.readouterr()
    assert ADMIN_TOKEN not in out + err and AGENT_TOKEN not in out + err


def test_a_token_listed_twice_is_refused_at_start(tmp_path: Path) -> None:
    tokens = tmp_path / "admins.txt"
    tokens.write_text("alice same-token-1\nbob same-token-1\n")
    with pytest.raises(ValueError, match="more than once"):
        AccessPolicy.build(listen="0.0.0.0:50051", admin_tokens_file=tokens)


def test_writes_need_an_admin_off_loopback() -> None:
    assert AccessPolicy.build(listen="127.0.0.1:50051").open_writes
    assert AccessPolicy.build(listen="localhost:50051").open_writes
    assert not AccessPolicy.build(listen="0.0.0.0:50051").open_writes
    assert not AccessPolicy.build(listen="[::]:50051").open_writes


def test_limits_end_one_stream_and_serve_everyone_else(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    hello = pb.ConnectRequest(hello=pb.AgentHello(agent_id="greedy"))
    huge = pb.ConnectRequest(
        outcomes=pb.OutcomeBatch(summaries=[pb.OutcomeSummary(service="s", failures=1)] * 2000)
    )
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.Connect(iter([hello, huge]), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1024 summaries" in caught.value.details()
    # more than 8 streams for one agent id
    release = threading.Event()

    def held() -> Iterator[pb.ConnectRequest]:
        yield hello
        release.wait(30)  # keep the stream open (a half-closed stream ends the session)

    calls = [stub.Connect(held(), timeout=30) for _ in range(8)]
    firsts = [next(iter(c)) for c in calls]
    assert all(f.HasField("snapshot") for f in firsts)
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.Connect(iter([hello]), timeout=10)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    for c in calls:
        c.cancel()
    # a message over 4 MiB is refused by gRPC itself
    big = pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service="s", fallbacks=["f" * 100] * 50_000))
    assert code_of(lambda: stub.PutPolicy(big, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # and everyone else is still served
    assert stub.ListBreakers(pb.ListBreakersRequest(), timeout=5) is not None


def state_of(pki: dict[str, object], address: str, name: str = "llm") -> int:
    try:
        answer = secure_stub(pki, address, "agent").GetBreaker(pb.GetBreakerRequest(name=name), timeout=5)
    except grpc.RpcError:
        return pb.BREAKER_STATE_UNSPECIFIED
    return answer.breaker.state


def test_replicas_relay_over_mutual_tls_as_replicas_not_admins(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], pki: dict[str, object]
) -> None:
    ca: Authority = pki["ca"]  # type: ignore[assignment]
    addresses = {}
    for name in ("cp-1", "cp-2"):
        pair = ca.issue(name, server=True)
        plane, addresses[name] = control_plane(
            etcd_server.endpoint, prefix, "--instance-id", name,
            "--tls-cert", str(pair.cert), "--tls-key", str(pair.key), "--tls-client-ca", str(ca.path),
            "--admin-identity", "operator-1", "--replica-identity", "cp-*",
        )  # fmt: skip
        spawned.append(plane)
    operator = secure_stub(pki, addresses["cp-1"], "operator")
    policy = policy_pb2.ServicePolicy(service="llm", failure_threshold=5)
    operator.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)

    def leader() -> str:
        found = subprocess.run(
            ["etcdctl", f"--endpoints={etcd_server.endpoint}", "get", f"{prefix}/leader",
             "--print-value-only"],
            capture_output=True, text=True, timeout=10, env={"ETCDCTL_API": "3"},
        )  # fmt: skip
        return str(json.loads(found.stdout)["instance"]) if found.stdout.strip() else ""

    deadline = time.monotonic() + 30
    while not leader():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    follower = next(n for n in addresses if n != leader())
    agent = secure_stub(pki, addresses[follower], "agent")
    summary = pb.OutcomeSummary(service="llm", failures=5, trailing_failures=5)
    release = threading.Event()

    def requests() -> Iterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(hello=pb.AgentHello(agent_id="agent-a"))
        yield pb.ConnectRequest(outcomes=pb.OutcomeBatch(sequence=1, summaries=[summary]))
        release.wait(30)

    call = agent.Connect(requests(), timeout=40)
    try:
        assert next(call).HasField("snapshot")
        deadline = time.monotonic() + 30
        while not all(state_of(pki, a) == pb.BREAKER_STATE_OPEN for a in addresses.values()):
            # the follower relayed to the leader over mutual TLS, and the leader decided
            assert time.monotonic() < deadline, "the relayed failures did not open the breaker"
            time.sleep(0.05)
    finally:
        release.set()
        call.cancel()
    # a replica's certificate relays; it does not write
    replica = ca.issue("cp-9", server=True)
    cert, key = replica.read()
    as_replica = pb_grpc.ControlPlaneServiceStub(
        grpc.secure_channel(addresses["cp-1"], grpc.ssl_channel_credentials(ca.path.read_bytes(), key, cert))
    )
    assert code_of(lambda: force_open(as_replica, "llm")) == grpc.StatusCode.PERMISSION_DENIED
