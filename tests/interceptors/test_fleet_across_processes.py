"""Agents in separate processes share one fleet-wide breaker through a real control plane."""

from __future__ import annotations

import time

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode, stats

SERVICE = "llm_provider"


def put_policy(address: str, **fields: object) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(
            pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service=SERVICE, **fields)),  # type: ignore[arg-type]
            timeout=10,
        )


def poll(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def state(proc: Proc) -> str | None:
    return proc.ask("state")["state"]  # type: ignore[no-any-return]


def test_breaker_trips_in_one_process_and_fails_fast_in_another(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], path: str
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    upstream_proc = python("tests.support.upstream", "llm")
    spawned += [plane, upstream_proc]
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    put_policy(
        address,
        failure_threshold=3,
        success_threshold=2,
        wait_duration_secs=1.0,
        max_retries=0,
        timeout_secs=5,
    )
    a = agent("agent-a", address, upstream, SERVICE, path=path)
    b = agent("agent-b", address, upstream, SERVICE, path=path)
    spawned += [a, b]
    poll(lambda: a.ask("state")["connected"] and b.ask("state")["connected"])

    # A sees the outage and trips the fleet's breaker
    set_mode(upstream, "fail", code="UNAVAILABLE")
    assert a.ask("call 3")["outcomes"] == {"LLMProviderUnavailable": 3}
    poll(lambda: state(b) == "OPEN")
    stats(upstream, reset=True)
    # B never saw a failure, yet fails fast, and its calls never reach the upstream
    assert b.ask("call 5")["outcomes"] == {"CircuitBreakerOpen": 5}
    assert stats(upstream).calls == 0

    # After the wait: HALF_OPEN. Both agents send many concurrent calls to a slow but
    # healthy upstream; the fleet lets only success_threshold (2) probes through at once.
    set_mode(upstream, "slow", delay_secs=0.8)
    poll(lambda: state(b) == "HALF_OPEN")
    stats(upstream, reset=True)
    a.send("pace 1.5 0.02")
    b.send("pace 1.5 0.02")
    paced = [a.ask("noop", timeout=60), b.ask("noop", timeout=60)]
    arrivals = sorted(stats(upstream).arrivals)
    assert arrivals, "probes were granted and sent"
    during_half_open = [t for t in arrivals if t < arrivals[0] + 0.7]
    assert len(during_half_open) <= 2, arrivals
    # the probes succeeded: the breaker closed for both, and both call through again
    poll(lambda: state(a) == "CLOSED" and state(b) == "CLOSED")
    assert sum(p["outcomes"].get("ok", 0) for p in paced) >= 2
    set_mode(upstream, "ok")
    assert a.ask("call 2")["outcomes"] == {"ok": 2}
    assert b.ask("call 2")["outcomes"] == {"ok": 2}


def test_agents_fail_static_when_the_control_plane_dies(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], path: str
) -> None:
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}")
    plane, address = control_plane(etcd_server.endpoint, prefix, *listen)
    upstream_proc = python("tests.support.upstream", "llm")
    spawned += [plane, upstream_proc]
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    put_policy(address, failure_threshold=50, max_retries=0, timeout_secs=5, rate_limit_requests=100000)
    a = agent("agent-a", address, upstream, SERVICE, path=path)
    spawned.append(a)

    # calls go on while the control plane is killed: none fails because of it
    a.send("pace 2.0 0.01")
    poll(lambda: stats(upstream).calls >= 20)  # the agent is calling
    plane.kill()
    killed_at = stats(upstream).calls
    poll(lambda: stats(upstream).calls >= killed_at + 20)  # and goes on after the kill
    during = a.ask("noop", timeout=60)
    assert set(during["outcomes"]) == {"ok"} and during["outcomes"]["ok"] > 50
    assert a.ask("stats")["connected"] is False
    assert a.ask("call 20")["outcomes"] == {"ok": 20}  # under the last known policy

    # back on the same address: the agent reconnects by itself and reports again
    plane2, _ = control_plane(etcd_server.endpoint, prefix, *listen)
    spawned.append(plane2)
    poll(lambda: a.ask("stats")["connected"])
    assert a.ask("stats")["streams_opened"] >= 2
    set_mode(upstream, "fail", code="UNAVAILABLE")
    assert a.ask("call 4")["outcomes"] == {"LLMProviderUnavailable": 4}

    def reported() -> bool:
        with grpc.insecure_channel(address) as channel:
            statistics = (
                pb_grpc.ControlPlaneServiceStub(channel)
                .GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5)
                .statistics
            )
        return statistics.errors_by_agent.get("agent-a", 0) == 4

    poll(reported)
