"""Faults under traffic: etcd goes away and comes back while agents keep calling.

``MC_CHAOS_SECS`` sets how long etcd stays down (5 s in ``make test``, 30 s in ``make soak``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from tests.support.etcd import etcdctl, start_etcd
from tests.support.procs import Proc, agent, control_plane, python

SERVICE_NAME = "mission_control.resilience.v1.ControlPlaneService"
DOWN_SECS = float(os.environ.get("MC_CHAOS_SECS", "5"))


def poll(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_etcd_outage_under_traffic(tmp_path: Path, spawned: list[Proc]) -> None:
    etcd = start_etcd(tmp_path)
    try:
        plane, address = control_plane(etcd.endpoint, "/chaos")
        upstream_proc = python("tests.support.upstream", "llm")
        spawned += [plane, upstream_proc]
        upstream = f"127.0.0.1:{upstream_proc.port()}"
        stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))

        def status() -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

        policy = policy_pb2.ServicePolicy(
            service="llm_provider", rate_limit_requests=10**6, failure_threshold=50
        )
        stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
        stub.SetBreakerState(
            pb.SetBreakerStateRequest(
                name="ops", state=pb.BREAKER_STATE_FORCED_OPEN, reason="before", create=True
            ),
            timeout=10,
        )
        a = agent("agent-a", address, upstream, "llm_provider")
        spawned.append(a)

        etcd.stop()
        a.send(f"pace {DOWN_SECS} 0.01")
        poll(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)
        # while etcd is down: a breaker trips from agents' reports (decided in memory) ...
        requests = iter(
            [
                pb.ConnectRequest(hello=pb.AgentHello(agent_id="reporter")),
                pb.ConnectRequest(
                    outcomes=pb.OutcomeBatch(summaries=[pb.OutcomeSummary(service="r2", failures=5)])
                ),
            ]
        )
        call = stub.Connect(requests, timeout=10)
        for response in call:
            if response.HasField("breaker") and response.breaker.name == "r2":
                assert response.breaker.state == pb.BREAKER_STATE_OPEN
                break
        call.cancel()
        # ... and an operator write is refused rather than acknowledged
        try:
            stub.SetBreakerState(
                pb.SetBreakerStateRequest(name="ops", state=pb.BREAKER_STATE_CLOSED, create=True), timeout=10
            )
            raise AssertionError("a write was acknowledged while etcd was down")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        during = a.ask("noop", timeout=DOWN_SECS + 60)
        assert set(during["outcomes"]) == {"ok"}, during  # no agent call failed because of it
        etcd.start()
        poll(lambda: status() == health_pb2.HealthCheckResponse.SERVING, timeout=60)
        # nothing lost, and the transition decided during the outage is now stored
        stored = poll(lambda: etcdctl(etcd.endpoint, "get", "/chaos/breakers/r2", "--print-value-only"))
        assert json.loads(stored)["state"] == "BREAKER_STATE_OPEN"
        ops = stub.GetBreaker(pb.GetBreakerRequest(name="ops"), timeout=5).breaker
        assert (ops.state, ops.reason) == (pb.BREAKER_STATE_FORCED_OPEN, "before")
        kept = stub.GetPolicy(pb.GetPolicyRequest(service="llm_provider"), timeout=5).policy
        assert kept.failure_threshold == 50
        assert a.ask("call 5")["outcomes"] == {"ok": 5}
    finally:
        etcd.stop()
