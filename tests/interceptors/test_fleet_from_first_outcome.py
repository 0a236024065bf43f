"""An agent connected before a service's first outcome decides on the fleet's breaker from
the moment the control plane makes it, as an agent that connects later does; and the fleet
counts the failures of every agent (separate processes, a real control plane and etcd)."""

from __future__ import annotations

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.interceptors.test_fleet_across_processes import SERVICE, poll, put_policy, state
from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode


def fleet_breaker(address: str) -> pb.Breaker | None:
    """The control plane's breaker of the service (listed: a read that makes none)."""
    with grpc.insecure_channel(address) as channel:
        listed = pb_grpc.ControlPlaneServiceStub(channel).ListBreakers(pb.ListBreakersRequest(), timeout=5)
    return next((b for b in listed.breakers if b.name == SERVICE), None)


def errors_by_agent(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        statistics = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics
    return dict(statistics.errors_by_agent)


def consecutive(address: str) -> int | None:
    found = fleet_breaker(address)
    return None if found is None else found.consecutive_failures


def test_agent_connected_before_the_first_outcome_decides_on_the_fleet_breaker(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    up_a, up_b = python("tests.support.upstream", "a"), python("tests.support.upstream", "b")
    spawned += [plane, up_a, up_b]
    upstream_a, upstream_b = f"127.0.0.1:{up_a.port()}", f"127.0.0.1:{up_b.port()}"
    put_policy(address, failure_threshold=3, wait_duration_secs=60, max_retries=0, timeout_secs=5)

    a = agent("agent-a", address, upstream_a, SERVICE)
    spawned.append(a)
    poll(lambda: a.ask("policy")["max_retries"] == 0)
    assert fleet_breaker(address) is None and state(a) is None  # the fleet has none yet
    assert a.ask("call 1")["outcomes"] == {"ok": 1}  # the service's first outcome
    poll(lambda: fleet_breaker(address) is not None)
    b = agent("agent-b", address, upstream_b, SERVICE)
    spawned.append(b)
    poll(lambda: state(b) == "CLOSED")  # from its snapshot
    poll(lambda: state(a) == "CLOSED", timeout=10)  # pushed when the fleet made it

    # A's upstream fails, B's serves, their outcomes reach the fleet in turn: the fleet's
    # consecutive count starts over at each of B's successes and it stays CLOSED; A decides
    # on it, not on a breaker of its own that saw only its failures
    set_mode(upstream_a, "fail", code="UNAVAILABLE")
    for _ in range(3):
        assert a.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}
        poll(lambda: consecutive(address) == 1)
        assert b.ask("call 1")["outcomes"] == {"ok": 1}
        poll(lambda: consecutive(address) == 0)
    assert state(a) == "CLOSED"
    assert a.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}  # not refused
    poll(lambda: errors_by_agent(address).get("agent-a") == 4)

    # both fail: the fleet counts each agent's failures together and opens for both
    set_mode(upstream_b, "fail", code="UNAVAILABLE")
    poll(lambda: consecutive(address) == 1)  # A's last one
    assert a.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}
    poll(lambda: consecutive(address) == 2)
    assert b.ask("call 1")["outcomes"] == {"LLMProviderUnavailable": 1}
    poll(lambda: state(a) == "OPEN" and state(b) == "OPEN")
    opened = fleet_breaker(address)
    assert opened is not None and opened.failures == 3, opened
    assert errors_by_agent(address) == {"agent-a": 5, "agent-b": 1}
    assert a.ask("call 1")["outcomes"] == {"CircuitBreakerOpen": 1}
    assert b.ask("call 1")["outcomes"] == {"CircuitBreakerOpen": 1}


def test_an_operators_forced_open_refuses_with_the_operators_reason(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    up = python("tests.support.upstream", "a")
    spawned += [plane, up]
    a = agent("agent-a", address, f"127.0.0.1:{up.port()}", SERVICE)
    spawned.append(a)
    with grpc.insecure_channel(address) as channel:
        pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(
            pb.SetBreakerStateRequest(
                name=SERVICE, state=pb.BREAKER_STATE_FORCED_OPEN, reason="provider maintenance", create=True
            ),
            timeout=10,
        )
    poll(lambda: state(a) == "FORCED_OPEN")
    refused = a.ask("call 1")
    assert refused["outcomes"] == {"CircuitBreakerOpen": 1}
    assert refused["last_error"] == (
        f"Circuit breaker FORCED_OPEN for service '{SERVICE}' "
        "(forced open by an operator: provider maintenance)"
    )
