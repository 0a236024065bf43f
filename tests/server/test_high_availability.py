"""Three control-plane replicas on a three-member etcd cluster, all started by the test."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdCluster

from tests.support.agents import RawAgent
from tests.support.polling import poll
from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import stats

PREFIX = "/ha"
SERVICE_NAME = "mission_control.resilience.v1.ControlPlaneService"


class Fleet:
    def __init__(self, folder: Path) -> None:
        self.etcd = EtcdCluster(folder).start()
        self.replicas: dict[str, tuple[Proc, str]] = {}
        for name in ("r1", "r2", "r3"):
            self.replicas[name] = control_plane(",".join(self.etcd.endpoints), PREFIX, "--instance-id", name)

    def stub(self, name: str) -> pb_grpc.ControlPlaneServiceStub:
        return pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(self.replicas[name][1]))

    def leader(self) -> str | None:
        etcdctl = shutil.which("etcdctl") or "etcdctl"
        live = [m.endpoint for m in self.etcd.members if m.running]
        result = subprocess.run(
            [etcdctl, f"--endpoints={','.join(live)}", "get", f"{PREFIX}/leader", "--print-value-only"],
            capture_output=True,
            text=True,
            timeout=10,
            env={"ETCDCTL_API": "3"},
        )
        text = result.stdout.strip()
        return json.loads(text)["instance"] if text else None

    def followers(self) -> list[str]:
        leader = self.leader()
        return [n for n in self.replicas if n != leader]

    def stop(self) -> None:
        for proc, _ in self.replicas.values():
            proc.kill()
        self.etcd.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        poll(f.leader)
        yield f
    finally:
        f.stop()


def put_policy(
    stub: pb_grpc.ControlPlaneServiceStub, service: str = "llm_provider", **fields: object
) -> None:
    policy = policy_pb2.ServicePolicy(service=service, **fields)  # type: ignore[arg-type]
    stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)


def report(stub: pb_grpc.ControlPlaneServiceStub, agent_id: str, service: str, failures: int) -> Any:
    """An agent stream that reports ``failures`` and stays open; returns the call."""
    summary = pb.OutcomeSummary(service=service, failures=failures)

    def requests() -> Iterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(hello=pb.AgentHello(agent_id=agent_id))
        yield pb.ConnectRequest(outcomes=pb.OutcomeBatch(summaries=[summary]))
        time.sleep(30)

    call = stub.Connect(requests(), timeout=60)
    assert next(call).HasField("snapshot")
    return call


def state(stub: pb_grpc.ControlPlaneServiceStub, name: str = "llm_provider") -> int:
    try:
        return stub.GetBreaker(pb.GetBreakerRequest(name=name), timeout=5).breaker.state
    except grpc.RpcError:
        return pb.BREAKER_STATE_UNSPECIFIED


async def test_failures_on_two_replicas_trip_one_breaker_everyone_sees(fleet: Fleet) -> None:
    put_policy(fleet.stub("r1"), failure_threshold=4, success_threshold=2, wait_duration_secs=1)
    one, two = fleet.followers()
    addr = {n: a for n, (_, a) in fleet.replicas.items()}
    async with (
        RawAgent(addr[one], "agent-1") as a1,
        RawAgent(addr[two], "agent-2") as a2,
        RawAgent(addr[fleet.leader() or "r1"], "agent-3") as a3,
    ):
        await a1.report("llm_provider", failures=2)
        await a2.report("llm_provider", failures=2)
        for agent_ in (a1, a2, a3):  # every agent on every replica sees the one breaker open
            await agent_.wait_for(lambda a=agent_: a.state("llm_provider") == pb.BREAKER_STATE_OPEN)
        assert a3.breakers["llm_provider"].failures == 4
        # HALF_OPEN: agents on both followers ask for probes; the leader grants at most
        # success_threshold (2) for the whole fleet, through the replicas
        for agent_ in (a1, a2, a3):
            await agent_.wait_for(lambda a=agent_: a.state("llm_provider") == pb.BREAKER_STATE_HALF_OPEN)
        for _ in range(5):
            for agent_ in (a1, a2, a3):
                await agent_.ask_probe("llm_provider")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        granted = [len(a.grants) for a in (a1, a2, a3)]
        assert 1 <= sum(granted) <= 2, granted
        # the probes succeed, wherever they ran: the breaker closes for everyone
        for agent_ in (a1, a2, a3):
            if agent_.grants:
                await agent_.report("llm_provider", probe_successes=len(agent_.grants))
        if sum(granted) < 2:  # one permit out: the next asker gets the second one
            for agent_ in (a1, a2, a3):
                await agent_.ask_probe("llm_provider")
            await asyncio.sleep(0.5)
            for agent_ in (a1, a2, a3):
                extra = len(agent_.grants) - granted[(a1, a2, a3).index(agent_)]
                if extra:
                    await agent_.report("llm_provider", probe_successes=extra)
        for agent_ in (a1, a2, a3):
            await agent_.wait_for(lambda a=agent_: a.state("llm_provider") == pb.BREAKER_STATE_CLOSED)


def test_leader_killed_under_traffic(fleet: Fleet, spawned: list[Proc]) -> None:
    put_policy(
        fleet.stub("r1"),
        failure_threshold=6,
        wait_duration_secs=60,
        max_retries=0,
        rate_limit_requests=100000,
    )
    # a service the agents' successful traffic does not touch, so only failures count toward it
    put_policy(fleet.stub("r1"), "vector_db", failure_threshold=6, wait_duration_secs=60)
    fleet.stub("r1").SetBreakerState(
        pb.SetBreakerStateRequest(name="ops", state=pb.BREAKER_STATE_FORCED_OPEN, reason="kept", create=True),
        timeout=10,
    )
    upstream_proc = python("tests.support.upstream", "llm")
    spawned.append(upstream_proc)
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    endpoints = ",".join(a for _, a in fleet.replicas.values())
    agents = [agent(f"agent-{i}", endpoints, upstream, "llm_provider") for i in range(3)]
    spawned.extend(agents)
    leader = fleet.leader()
    assert leader is not None
    survivor = next(n for n in fleet.replicas if n != leader)
    for a in agents:
        a.send("pace 3.0 0.01")
    poll(lambda: stats(upstream).calls >= 60)  # the agents are calling
    killed_at = time.monotonic()
    fleet.replicas[leader][0].kill()
    calls_at_kill = stats(upstream).calls
    # failures reported while there is no leader still count
    stub = fleet.stub(survivor)
    reporter = report(stub, "reporter", "vector_db", 3)
    new_leader = poll(lambda: (n := fleet.leader()) and n != leader and n, timeout=20)
    failover = time.monotonic() - killed_at
    assert failover < 3 * 3, f"no new leader within 3 lease TTLs ({failover:.1f}s)"
    poll(lambda: stats(upstream).calls >= calls_at_kill + 30)  # they went on calling over it
    paced = [a.ask("noop", timeout=60) for a in agents]
    assert all(set(p["outcomes"]) == {"ok"} for p in paced), paced  # no call failed
    # nothing lost
    assert state(stub, "ops") == pb.BREAKER_STATE_FORCED_OPEN
    kept = stub.GetPolicy(pb.GetPolicyRequest(service="llm_provider"), timeout=5).policy
    assert kept.failure_threshold == 6
    # agents moved to live replicas by themselves
    for a in agents:
        poll(lambda a=a: a.ask("stats")["connected"])
    # 3 failures during the failover + 3 now = the threshold of 6: the new leader trips it
    reporter_2 = report(fleet.stub(new_leader), "reporter-2", "vector_db", 3)
    poll(lambda: state(stub, "vector_db") == pb.BREAKER_STATE_OPEN, timeout=20)
    reporter.cancel()
    reporter_2.cancel()


def test_etcd_members_lost(fleet: Fleet) -> None:
    stub = fleet.stub("r1")
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(fleet.replicas["r1"][1]))

    def status() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

    stub.SetBreakerState(
        pb.SetBreakerStateRequest(name="a", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True),
        timeout=10,
    )
    fleet.etcd.members[0].stop()
    # one member of three down: everything keeps working
    stub.SetBreakerState(
        pb.SetBreakerStateRequest(name="b", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True),
        timeout=15,
    )
    assert status() == health_pb2.HealthCheckResponse.SERVING
    fleet.etcd.members[1].stop()
    # two down: no quorum; the loss shows in health, the last state is still served, writes refused
    poll(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=30)
    assert state(stub, "a") == state(stub, "b") == pb.BREAKER_STATE_FORCED_OPEN
    with pytest.raises(grpc.RpcError) as caught:
        stub.SetBreakerState(
            pb.SetBreakerStateRequest(
                name="c", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True
            ),
            timeout=15,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
