"""Per-endpoint breakers across processes: real etcd, a control plane process, an upstream
per endpoint and two agent processes. Endpoint A failing opens only A's fleet breaker (the
other agent sees it OPEN); B's calls pass and serve A's calls as a fallback; endpoints past
the policy's cap go by the service's breaker (counted), and idle ones are forgotten on
both sides, which makes room again."""

from __future__ import annotations

import sys

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane, python
from tests.support.upstream import set_mode

SERVICE = "llm_provider"
A, B = f"{SERVICE}/openai/gpt-x", f"{SERVICE}/anthropic/claude"
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    timeout_secs=5,
    max_retries=0,
    failure_threshold=3,
    wait_duration_secs=60,
    rate_limit_requests=10**6,
    fallbacks=[B],
    max_endpoints=2,
    endpoint_idle_secs=3600,  # nothing is forgotten until the test shortens it
)


def endpoint_agent(agent_id: str, address: str, upstreams: str) -> Proc:
    args = [agent_id, address, SERVICE, upstreams]
    proc = Proc([sys.executable, "-m", "tests.support.endpoint_agent", *args])
    assert '"ready": true' in proc.wait_for('{"ready"', timeout=60)
    return proc


def test_endpoint_breakers_trip_alone_fall_back_and_stay_bounded(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    up_a, up_b = python("tests.support.upstream", "ep-a"), python("tests.support.upstream", "ep-b")
    spawned += [plane, up_a, up_b]
    a_addr, b_addr = f"127.0.0.1:{up_a.port()}", f"127.0.0.1:{up_b.port()}"
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=POLICY), timeout=10)
    upstreams = f"openai/gpt-x={a_addr},anthropic/claude={b_addr},mistral/large={b_addr}"
    first = endpoint_agent("endpoints-1", address, upstreams)
    second = endpoint_agent("endpoints-2", address, upstreams)
    spawned += [first, second]

    def breakers() -> dict[str, int]:
        listed = stub.ListBreakers(pb.ListBreakersRequest(), timeout=5).breakers
        return {b.name: b.state for b in listed}

    set_mode(a_addr, "fail", code="UNAVAILABLE")
    # every call of A is served by B: 3 fallbacks after failures, then fallbacks after refusals
    assert first.ask("call openai/gpt-x 6 anthropic/claude")["outcomes"] == {"served by ep-b": 6}
    poll(lambda: breakers().get(A) == pb.BREAKER_STATE_OPEN)
    assert second.ask(f"until_state {A} OPEN")["state"] == "OPEN"
    assert second.ask("call anthropic/claude 3")["outcomes"] == {"served by ep-b": 3}
    assert second.ask("call openai/gpt-x 1")["outcomes"] == {"CircuitBreakerOpen": 1}
    assert breakers().get(B) == pb.BREAKER_STATE_CLOSED
    assert SERVICE not in breakers()  # the service's own breaker never moved

    # A and B fill the cap: a third endpoint goes by the service's breaker, counted
    assert second.ask("call mistral/large 2")["outcomes"] == {"served by ep-b": 2}

    def over_cap() -> int:
        statistics = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
        return statistics.endpoints_over_cap_by_service.get(SERVICE, 0)

    poll(lambda: over_cap() == 2)  # the two calls may arrive in two batches
    assert f"{SERVICE}/mistral/large" not in breakers()

    # B goes idle: forgotten by the control plane (and its stored key) and by the agents ...
    shorter = policy_pb2.ServicePolicy()
    shorter.CopyFrom(POLICY)
    shorter.endpoint_idle_secs = 1.0
    stub.PutPolicy(pb.PutPolicyRequest(policy=shorter), timeout=10)
    poll(lambda: B not in breakers())
    poll(lambda: not etcdctl(etcd_server.endpoint, "get", f"{prefix}/breakers/{B}", "--print-value-only"))
    poll(lambda: B not in second.ask("names")["names"])
    # ... so the third endpoint gets a breaker of its own now
    assert second.ask("call mistral/large 1")["outcomes"] == {"served by ep-b": 1}
    poll(lambda: breakers().get(f"{SERVICE}/mistral/large") == pb.BREAKER_STATE_CLOSED)
    assert f"{SERVICE}/mistral/large" in second.ask("names")["names"]
