"""One fleet-wide rate limit, shared by 20 agents in several processes, by lease."""

from __future__ import annotations

import sys
import time
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.support.procs import Proc, control_plane

LIMIT, WINDOW, PERIOD = 200, 2.0, 0.5  # 100 calls/s for the fleet, leased per 0.5 s
GRANULARITY = LIMIT * PERIOD / WINDOW  # one period's worth


def fleet_policy(service: str) -> policy_pb2.ServicePolicy:
    return policy_pb2.ServicePolicy(
        service=service,
        rate_limit_requests=LIMIT,
        rate_limit_window_secs=WINDOW,
        failure_threshold=10**6,
        max_retries=0,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=PERIOD),
    )


def worst_window(times: list[float], window: float) -> int:
    times = sorted(times)
    worst, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def start_agents(address: str, service: str, tag: str, rates: list[float]) -> Proc:
    proc = Proc(
        [
            sys.executable,
            "-m",
            "tests.support.quota_proc",
            address,
            service,
            tag,
            ",".join(str(r) for r in rates),
        ]
    )
    assert '"ready": true' in proc.wait_for('{"ready"', timeout=60)
    return proc


def test_twenty_agents_share_one_limit_fairly(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=fleet_policy("shared_llm")), timeout=10)
    heavy, light = 40.0, 2.0
    groups = [[heavy, heavy] + [light] * 3 for _ in range(4)]  # 4 processes x 5 agents
    procs = [start_agents(address, "shared_llm", f"p{i}", rates) for i, rates in enumerate(groups)]
    spawned.extend(procs)
    seconds, warmup = 6.0, 1.5
    for proc in procs:
        proc.send(f"run {seconds}")
    started = time.time()
    results: list[dict[str, Any]] = [proc.ask("noop", timeout=60) for proc in procs]
    admitted = {a: t for r in results for a, t in r["admitted"].items()}
    every = [t for times in admitted.values() for t in times if t > started + warmup]
    # over any window, the fleet admits at most the limit plus one lease period's worth
    assert worst_window(every, WINDOW) <= LIMIT + GRANULARITY, worst_window(every, WINDOW)
    measured = seconds - warmup
    rates = {a: len([t for t in times if t > started + warmup]) / measured for a, times in admitted.items()}
    light_agents = [a for a in rates if a.split("-")[1] not in ("0", "1")]
    heavy_agents = [a for a in rates if a.split("-")[1] in ("0", "1")]
    # the modest get what they ask; the rest is split evenly among the heavy
    fair = (LIMIT / WINDOW - light * len(light_agents)) / len(heavy_agents)
    # (a message of text: shown whole, where pytest cuts a dict's repr short)
    attempted = {a: n for r in results for a, n in r["attempted"].items()}
    shown = f"fair {fair:g}/s; admitted/s {rates}; attempted {attempted}"
    assert all(rates[a] >= 0.75 * light for a in light_agents), shown
    assert all(rates[a] >= 0.75 * fair for a in heavy_agents), shown
    usage = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    assert usage[0].resource == "shared_llm.requests" and usage[0].agents == 20
    assert usage[0].leased <= usage[0].fleet_units + 1e-6


def rate_between(times: list[float], start: float, end: float) -> float:
    return len([t for t in times if start <= t < end]) / (end - start)


def test_agents_joining_leaving_and_a_control_plane_outage(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}")
    plane, address = control_plane(etcd_server.endpoint, prefix, *listen)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    stub.PutPolicy(pb.PutPolicyRequest(policy=fleet_policy("shared")), timeout=10)
    first = start_agents(address, "shared", "a", [40.0] * 5)
    spawned.append(first)
    # the first five call until told to stop: however long a loaded machine takes to start
    # the processes below, every phase of the timeline falls within their calls
    first.send("start")
    began = time.time()
    time.sleep(3)
    second = start_agents(address, "shared", "b", [40.0] * 5)  # five more join
    spawned.append(second)
    second.send("run 5")
    joined = time.time()
    late = second.ask("noop", timeout=60)  # ... and leave again after 5 s
    left = time.time()
    time.sleep(3.5)  # their shares come back once a fall in demand held two periods
    plane.kill()  # the control plane goes away while the first five keep calling
    killed = time.time()
    time.sleep(3)
    plane2, _ = control_plane(etcd_server.endpoint, prefix, *listen)
    spawned.append(plane2)
    restarted = time.time()

    # after the restart the agents are leased again: the five callers and the five idle
    # ones that left off calling but stay connected
    def leased() -> bool:
        usage = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
        return bool(usage) and usage[0].agents >= 10 and usage[0].leased > 0

    deadline = time.monotonic() + 20
    while not leased():
        assert time.monotonic() < deadline, "no leases after the restart"
        time.sleep(0.1)
    early = first.ask("stop", timeout=60)
    first.send("run 4")  # ... and call on under the new control plane's leases
    resumed = time.time()
    after = first.ask("noop", timeout=60)
    a_times = early["admitted"]
    b_times = late["admitted"]
    every = [
        t for times in [*a_times.values(), *b_times.values(), *after["admitted"].values()] for t in times
    ]
    # what the agents admitted: never more than the limit plus one period's worth, in any
    # window, through all of it
    assert worst_window(every, WINDOW) <= LIMIT + GRANULARITY, worst_window(every, WINDOW)
    per_second = LIMIT / WINDOW
    # five agents alone share the whole limit; ten share it; five again after the others left
    alone = [rate_between(t, began + 1.5, joined) for t in a_times.values()]
    shared = [rate_between(t, joined + 2.0, left) for t in [*a_times.values(), *b_times.values()]]
    again = [rate_between(t, left + 2.5, killed) for t in a_times.values()]
    assert all(r >= 0.6 * per_second / 5 for r in alone), ("alone", alone)
    assert all(r >= 0.6 * per_second / 10 for r in shared), ("shared", shared)
    assert all(r <= 1.2 * per_second / 5 for r in shared), ("shared", shared)  # nobody kept the old share
    assert all(r >= 0.6 * per_second / 5 for r in again), ("again", again)
    # while the control plane is gone: at most the safe share (1/5 each), never unlimited
    outage = [rate_between(t, killed + PERIOD * 2, restarted) for t in a_times.values()]
    assert all(0 < r <= 1.2 * per_second / 5 for r in outage), ("outage", outage)
    # under the restarted control plane the calls run under its leases, split fairly again
    # from the next period on
    steady = resumed + 2 * PERIOD
    for agent, times in after["admitted"].items():
        counted = [t for t in times if t >= steady]
        under = [t for t in after["leased"][agent] if t >= steady]
        assert len(under) >= 0.9 * len(counted), (agent, len(under), len(counted))
        assert rate_between(times, steady, resumed + 4) >= 0.6 * per_second / 5, agent


#: How long the agents of the long-period test call at most, waiting for their periods (a
#: first lease comes late on a loaded machine; a 4-s period never leased admits nothing).
LONG_RUN_BOUND = 90.0


def leased_periods(proc: Proc, periods: int, units: int, bound: float) -> dict[str, list[float]]:
    """Let the agents of ``proc`` call, 4 s at a time, until each admitted calls in
    ``periods`` different 4-s periods and ``units`` calls in all; the calls admitted (every
    round's). Fails past ``bound`` seconds, saying what each agent had."""
    admitted: dict[str, list[float]] = {}
    deadline = time.monotonic() + bound
    while True:
        for agent, times in proc.ask("run 4", timeout=60)["admitted"].items():
            admitted.setdefault(agent, []).extend(times)
        seen = {a: (len({int(t // 4.0) for t in times}), len(times)) for a, times in admitted.items()}
        if len(seen) == 2 and all(n >= periods and used >= units for n, used in seen.values()):
            return admitted
        assert time.monotonic() < deadline, f"(periods, calls) admitted per agent: {seen}"


def test_a_lease_period_longer_than_the_epoch_record_is_leased(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    """A lease period may be up to 60 s, and a round leases the period after the running one,
    up to 1.5 periods ahead: further than the leader records ahead of time by default. The
    record then reaches past the period (a 4-s period was never leased: nothing admitted)."""
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
    long = policy_pb2.ServicePolicy(
        service="long_period",
        rate_limit_requests=40,
        rate_limit_window_secs=4.0,
        failure_threshold=10**6,
        max_retries=0,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=4.0),
    )
    stub.PutPolicy(pb.PutPolicyRequest(policy=long), timeout=10)
    proc = start_agents(address, "long_period", "p0", [20.0, 20.0])
    spawned.append(proc)
    admitted = leased_periods(proc, periods=3, units=20, bound=LONG_RUN_BOUND)
    every = [t for times in admitted.values() for t in times]
    assert worst_window(every, 4.0) <= 40 + 40, worst_window(every, 4.0)
    usage = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    assert usage[0].resource == "long_period.requests" and usage[0].leased <= usage[0].fleet_units + 1e-6
