"""I5 with real processes: an agent moves from a follower to the leader and back while the
follower's link to the leader is down, and each failure it reported is counted once.

etcd, a leader L (its advertised address a TCP proxy, so the follower's link goes through
it), a follower F, and an agent process reaching F and L through proxies of their own:

1. F's link to L is cut; the agent, on F, reports OLD failures (F holds them: no leader);
2. its stream to F is cut: it moves to L and sends them again there (L counts them);
3. its stream to L is cut: back on F, with nothing left to send again, it reports NEW more;
4. F's link comes back: F passes on what it held, the agent sees all acknowledged.

L's engine must have counted OLD + NEW. The old code merged the new batches into the range
of the old ones F held (one agent session), L refused that range whole (it had counted part
of it) and F still acknowledged it: 82 of 150 counted, in every run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.tcp_pause import PausableProxy, proxy_in_thread

SERVICE = "moved"
OLD, NEW = 50, 100
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE, failure_threshold=1_000_000, max_retries=0, rate_limit_requests=100_000
)

Proxy = tuple[PausableProxy, asyncio.AbstractEventLoop]


@pytest.fixture
def proxies() -> Iterator[tuple[Proxy, Proxy, Proxy]]:
    with proxy_in_thread() as link, proxy_in_thread() as to_follower, proxy_in_thread() as to_leader:
        yield link, to_follower, to_leader


def block(proxy: Proxy) -> None:
    """No connection through ``proxy`` from now on; those open are reset."""
    proxy[0].target = None
    proxy[1].call_soon_threadsafe(proxy[0].cut)


def failures_counted(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=10).statistics
    return stats.errors_by_service.get(SERVICE, 0)


@pytest.mark.timeout(240)
def test_an_agent_moving_from_a_follower_to_the_leader_and_back_has_each_failure_counted_once(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], proxies: tuple[Proxy, Proxy, Proxy]
) -> None:
    link, to_follower, to_leader = proxies
    endpoint = etcd_server.endpoint
    leader, leader_address = control_plane(
        endpoint, prefix, "--instance-id", "r1", "--advertise", link[0].address
    )
    spawned.append(leader)
    link[0].target = leader_address
    poll(lambda: leader_of(endpoint, prefix) == "r1")
    follower, follower_address = control_plane(endpoint, prefix, "--instance-id", "r2")
    spawned.append(follower)
    put_policy(leader_address, POLICY)
    block(link)  # 1. F's link to L down
    to_follower[0].target = follower_address
    block(to_leader)  # the agent reaches F only
    agent = Proc(
        [
            sys.executable,
            "-m",
            "tests.support.failing_agent",
            "agent-a",
            f"{to_follower[0].address},{to_leader[0].address}",
            SERVICE,
        ]
    )
    spawned.append(agent)
    assert agent.ask("noop") == {"ready": True}
    # (its own breaker would open on the defaults' 5 failures)
    poll(lambda: agent.ask("policy")["failure_threshold"] == POLICY.failure_threshold)
    assert agent.ask(f"fail {OLD} 0.03") == {"failed": OLD, "other": []}
    poll(lambda: agent.ask("state")["unacked"] > 0)  # held by F: nothing acknowledged
    to_leader[0].target = leader_address  # 2. to L
    block(to_follower)
    poll(lambda: agent.ask("state")["endpoint"] == to_leader[0].address)
    poll(lambda: agent.ask("state")["unacked"] == 0)  # L counted them
    to_follower[0].target = follower_address  # 3. back to F
    block(to_leader)
    poll(lambda: agent.ask("state")["endpoint"] == to_follower[0].address)
    assert agent.ask(f"fail {NEW} 0.03") == {"failed": OLD + NEW, "other": []}
    poll(lambda: agent.ask("state")["unacked"] > 0)
    link[0].target = leader_address  # 4. F's link back
    poll(lambda: agent.ask("state")["unacked"] == 0, timeout=60)
    # acknowledged by F only once L acknowledged what carried them: L has taken them all
    assert failures_counted(leader_address) == OLD + NEW
    agent.send("quit")
