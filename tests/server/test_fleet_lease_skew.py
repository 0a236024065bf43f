"""A new leader whose wall clock is behind the earlier leader's (real etcd, two replica
processes, two agent processes listing both).

Periods are numbered by the leader's wall clock: the first leader's clock reads 1.5 s ahead
(three 0.5-s periods), so the second one's numbers are lower than those the agents last
held. Its leases are of a later epoch and start its numbering: the agents must spend them,
not refuse every fleet-limited call for good once their horizon has passed."""

from __future__ import annotations

import json
import sys
import time

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_fleet_limits import worst_window
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "skewed_svc"
LIMIT, WINDOW, PERIOD, HORIZON = 100, 2.0, 0.5, 5.0
SKEW = 1.5
#: The agents together ask 1.5 times the limit.
RATE = 37.5


def skewed_plane(etcd: str, prefix: str) -> tuple[Proc, str]:
    serve = ["serve", "--listen", "127.0.0.1:0", "--etcd", etcd, "--etcd-prefix", prefix]
    proc = Proc(
        [sys.executable, "-m", "tests.support.skewed_plane", str(SKEW), *serve, "--instance-id", "ahead"]
    )
    line = proc.wait_for("mission-control: serving on ", timeout=60)
    return proc, line.split()[3]


def used_on(address: str) -> float:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        usage = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    return sum(u.used for u in usage if u.service == SERVICE)


def test_agents_spend_the_leases_of_a_new_leader_whose_clock_is_behind(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    ahead, ahead_address = skewed_plane(etcd_server.endpoint, prefix)
    spawned.append(ahead)
    poll(lambda: leader_of(etcd_server.endpoint, prefix) == "ahead")
    right, right_address = control_plane(etcd_server.endpoint, prefix, "--instance-id", "right")
    spawned.append(right)
    fleet = policy_pb2.FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=HORIZON)
    policy = policy_pb2.ServicePolicy(
        service=SERVICE,
        rate_limit_requests=LIMIT,
        rate_limit_window_secs=WINDOW,
        failure_threshold=10**6,
        fleet=fleet,
    )
    put_policy(ahead_address, policy)
    both = f"{ahead_address},{right_address}"
    agents = [
        Proc([sys.executable, "-m", "tests.support.horizon_agent", n, both, SERVICE, str(RATE)]) for n in "xy"
    ]
    spawned += agents
    for agent in agents:
        agent.wait_for('{"first"', timeout=120)
    ahead.kill()
    killed = time.time()
    poll(lambda: leader_of(etcd_server.endpoint, prefix) == "right", timeout=60)
    # past every horizon of the first leader's leases, the agents spend the new leader's
    settled = killed + HORIZON + 4 * PERIOD
    poll(lambda: time.time() > settled and used_on(right_address) > 0, timeout=90)
    since = time.time()
    poll(lambda: used_on(right_address) > 0 and time.time() > since + 2 * PERIOD, timeout=30)
    for agent in agents:
        agent.send("stop")
    results = [json.loads(agent.wait_for('{"admitted"', timeout=60)) for agent in agents]
    late = [[t for t in r["admitted"] if t > settled] for r in results]
    assert all(late), [len(t) for t in late]
    every = [t for r in results for t in r["admitted"]]
    assert worst_window(every, WINDOW) <= LIMIT + LIMIT * PERIOD / WINDOW, worst_window(every, WINDOW)
