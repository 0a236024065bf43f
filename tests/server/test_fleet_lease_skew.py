"""A new leader whose wall clock is behind the earlier leader's (real etcd, two replica
processes, two agent processes listing both).

Periods are numbered by the leader's wall clock: the first leader's clock reads 1.5 s ahead
(three 0.5-s periods), so the second one's numbers are lower than those the agents last
held. Its leases are of a later epoch and start its numbering: the agents must spend them,
not refuse every fleet-limited call for good once their horizon has passed."""

from __future__ import annotations

import bisect
import json
import math
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_fleet_limits import worst_window
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, logging_to, tail

SERVICE = "skewed_svc"
LIMIT, WINDOW, PERIOD, HORIZON = 100, 2.0, 0.5, 5.0
SKEW = 1.5
#: The agents together ask 1.5 times the limit.
RATE = 37.5


def plane(etcd: str, prefix: str, instance: str, log: Path, skew: float = 0.0) -> tuple[Proc, str]:
    """A replica (its wall clock ``skew`` seconds off) logging to ``log``; it and its address."""
    serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        etcd,
        "--etcd-prefix",
        prefix,
        "--instance-id",
        instance,
    ]
    command = ["tests.support.skewed_plane", str(skew)] if skew else ["mission_control.server.cli"]
    proc = Proc(logging_to(log, [sys.executable, "-m", *command, *serve]))
    line = proc.wait_for("mission-control: serving on ", timeout=60)
    return proc, line.split()[3]


def used_on(address: str) -> float:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        usage = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    return sum(u.used for u in usage if u.service == SERVICE)


@dataclass
class Seen:
    """What the test saw so far (told when it fails)."""

    killed: float = 0.0
    right: str = ""
    results: list[dict] = field(default_factory=list)  # type: ignore[type-arg]


def what_it_saw(etcd: str, prefix: str, seen: Seen, logs: list[Path]) -> str:
    """The leader, the new leader's figures, each agent's admitted calls per second since the
    kill and the replicas' last log lines."""
    said = [f"killed at {seen.killed:.3f}"]
    try:
        used = used_on(seen.right) if seen.right else None
        said.append(f"leader: {leader_of(etcd, prefix)}; used on the new leader: {used}")
    except (AssertionError, grpc.RpcError, subprocess.TimeoutExpired) as err:
        said.append(f"leader / usage not read: {err}")
    for n, result in enumerate(seen.results):
        seconds = sorted(Counter(math.floor(t - seen.killed) for t in result["admitted"]).items())
        said.append(f"agent {n}: admitted per second since the kill {seconds}; refused {result['refused']}")
    every = sorted(t for r in seen.results for t in r["admitted"])
    if every:
        most, start = max((bisect.bisect_left(every, t + WINDOW) - i, t) for i, t in enumerate(every))
        said.append(
            f"most admitted in {WINDOW:g} s: {most}, from {start - seen.killed:+.2f} s after the kill"
        )
    for log in logs:
        said.append(f"--- {log.name} (last lines) ---\n{tail(log)}")
    return "\n".join(said)


#: After the kill: past every horizon of the first leader's leases.
SETTLE = HORIZON + 4 * PERIOD


def test_agents_spend_the_leases_of_a_new_leader_whose_clock_is_behind(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    logs, seen = [tmp_path / "ahead.log", tmp_path / "right.log"], Seen()
    try:
        fail_over(etcd_server.endpoint, prefix, spawned, logs, seen)
        late = [[t for t in r["admitted"] if t > seen.killed + SETTLE] for r in seen.results]
        assert all(late), [len(t) for t in late]
        every = [t for r in seen.results for t in r["admitted"]]
        assert worst_window(every, WINDOW) <= LIMIT + LIMIT * PERIOD / WINDOW, worst_window(every, WINDOW)
    except BaseException as err:  # also pytest's timeout: say what was seen before it
        err.add_note(what_it_saw(etcd_server.endpoint, prefix, seen, logs))
        raise


def fail_over(etcd: str, prefix: str, spawned: list[Proc], logs: list[Path], seen: Seen) -> None:
    """The leader ahead killed under two agents; ``seen`` says when, and what they admitted."""
    ahead, ahead_address = plane(etcd, prefix, "ahead", logs[0], SKEW)
    spawned.append(ahead)
    poll(lambda: leader_of(etcd, prefix) == "ahead")
    right, seen.right = plane(etcd, prefix, "right", logs[1])
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
    both = f"{ahead_address},{seen.right}"
    agents = [
        Proc([sys.executable, "-m", "tests.support.horizon_agent", n, both, SERVICE, str(RATE)]) for n in "xy"
    ]
    spawned += agents
    for agent in agents:
        agent.wait_for('{"first"', timeout=120)
    ahead.kill()
    seen.killed = time.time()
    poll(lambda: leader_of(etcd, prefix) == "right", timeout=60)
    poll(lambda: time.time() > seen.killed + SETTLE and used_on(seen.right) > 0, timeout=90)
    since = time.time()
    poll(lambda: used_on(seen.right) > 0 and time.time() > since + 2 * PERIOD, timeout=30)
    for agent in agents:
        agent.send("stop")
    seen.results = [json.loads(agent.wait_for('{"admitted"', timeout=60)) for agent in agents]
