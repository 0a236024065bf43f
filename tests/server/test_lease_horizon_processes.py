"""Agents cut off from every control plane for good stop spending the fleet limit at the
same horizon at which the new leader stops keeping their share aside (I4 across a
failover). Real processes: two replicas on a real etcd, four agents in processes of their
own, each knowing one replica's address only; the first leader is paused past its leader
lease and resumed, then the second leader is killed, so two agents never reach a control
plane again. What counts is what the agents admitted, not what was leased."""

from __future__ import annotations

import json
import signal
import sys
import time

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "horizon", 0.5, 100, 2.0, 3.0
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period: 25
RATE = 40.0  # each agent asks for more than its share: 4 x 40/s against 50/s


def leader(endpoint: str, prefix: str) -> str | None:
    text = etcdctl(endpoint, "get", f"{prefix}/leader", "--print-value-only").strip()
    return json.loads(text)["instance"] if text else None


def start_agents(spawned: list[Proc], *wanted: tuple[str, str]) -> list[Proc]:
    """Agent processes (id, the one address each knows), started at once, once connected."""
    procs = []
    for agent_id, address in wanted:
        args = [sys.executable, "-m", "tests.support.horizon_agent", agent_id, address, SERVICE, str(RATE)]
        procs.append(Proc(args))
        spawned.append(procs[-1])
    for proc in procs:
        ready = proc.wait_for('{"ready"', timeout=60)
        assert '"ready": true' in ready, ready
    return procs


def usage(address: str) -> pb.FleetLimitUsage | None:
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    found = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    return next((u for u in found if u.service == SERVICE), None)


def worst_window(times: list[float]) -> int:
    times, worst, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - WINDOW:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def timeline(results: dict[str, dict], events: dict[str, float]) -> str:  # type: ignore[type-arg]
    """What each agent admitted (and refused for want of a lease) per second: shown when
    the test fails."""
    start = min(t for r in results.values() for t in r["admitted"])
    lines = [" ".join(f"{name}@{at - start:.1f}" for name, at in events.items())]
    for name, got in results.items():
        counts = [0] * (int(max(events.values()) - start) + 6)
        for t in got["admitted"]:
            if int(t - start) < len(counts):
                counts[int(t - start)] += 1
        cut = sorted({int(t - start) for t in got["cut_off"]})
        lines.append(f"{name}: {counts} cut off in seconds {cut}")
    return "\n".join(lines)


@pytest.mark.timeout(120)
def test_agents_cut_off_for_good_and_the_new_leader_end_at_the_same_horizon(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint = etcd_server.endpoint
    first, first_address = control_plane(endpoint, prefix, "--instance-id", "r1")
    spawned.append(first)
    poll(lambda: leader(endpoint, prefix) == "r1")
    second, second_address = control_plane(endpoint, prefix, "--instance-id", "r2")
    spawned.append(second)
    policy = policy_pb2.ServicePolicy(
        service=SERVICE,
        rate_limit_requests=LIMIT,
        rate_limit_window_secs=WINDOW,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=HORIZON),
    )
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(first_address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
    # two agents know r1 only, two r2 only
    agents = start_agents(
        spawned,
        ("stays-0", first_address),
        ("stays-1", first_address),
        ("lost-0", second_address),
        ("lost-1", second_address),
    )
    stays, lost = agents[:2], agents[2:]
    for proc in agents:  # every agent holds a lease (else it spends nothing when cut off)
        proc.wait_for('{"first"', timeout=30)

    # r1 paused past its leader lease: r2 leads; r1 resumes and relays to r2
    first.popen.send_signal(signal.SIGSTOP)
    paused = time.time()
    try:
        poll(lambda: leader(endpoint, prefix) == "r2")
        took_over = time.time()
    finally:
        first.popen.send_signal(signal.SIGCONT)
    poll(lambda: (u := usage(second_address)) is not None and u.agents == 4 and u.leased > 0)
    # r2 dies: the agents that know only r2 never reach a control plane again
    second.kill()
    killed = time.time()
    poll(lambda: leader(endpoint, prefix) == "r1")
    # r1 keeps their share aside until their horizon, then splits the whole limit
    poll(lambda: (u := usage(first_address)) is not None and u.kept_aside > 0)
    poll(lambda: (u := usage(first_address)) is not None and u.kept_aside == 0 and u.leased >= UNITS - 1)
    split = time.time()
    time.sleep(2 * WINDOW)  # a whole window of the whole split, after its first period
    results = {}
    for proc in stays + lost:
        proc.send("stop")
    for name, proc in zip(["stays-0", "stays-1", "lost-0", "lost-1"], stays + lost, strict=True):
        results[name] = json.loads(proc.wait_for('{"admitted"', timeout=30))

    print(timeline(results, {"paused": paused, "r2 leads": took_over, "r2 killed": killed, "split": split}))
    admitted = [t for r in results.values() for t in r["admitted"]]
    worst = worst_window(admitted)
    assert worst <= LIMIT + UNITS, f"{worst} admitted in one {WINDOW} s window (limit {LIMIT} + {UNITS:g})"
    for name in ("lost-0", "lost-1"):
        got = results[name]
        # past its horizon it refused, saying why, and admitted nothing after that
        later = [t for t in got["cut_off"] if t > killed]
        assert later, f"{name} never refused for want of a lease"
        assert all(t < min(later) for t in got["admitted"]), f"{name} spent after its horizon"
    # the agents still reached are split the whole limit again (what cut-off agents held)
    after = [t for name in ("stays-0", "stays-1") for t in results[name]["admitted"] if t >= split + PERIOD]
    assert worst_window(after) >= 0.75 * LIMIT, f"{worst_window(after)} of {LIMIT} per window after the split"
