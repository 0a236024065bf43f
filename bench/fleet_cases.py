"""Cases 2-5: breaker propagation, config propagation, control-plane capacity, retry
amplification. All with real processes on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.client.policy import Backoff, RetryBudget, ServicePolicy
from mission_control.interceptors import client_interceptor
from mission_control.resilience.v1 import control_plane_pb2 as cp
from mission_control.resilience.v1 import control_plane_pb2_grpc as cp_grpc
from mission_control.server.store import EtcdStore

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.procs import Proc, agent, python
from tests.support.upstream import set_mode, stats

from .common import Stack, cpu_seconds, median, percentile, rss_kib


def _set_breaker(s: Stack, name: str, state: int) -> None:
    with grpc.insecure_channel(s.plane_address) as channel:
        cp_grpc.ControlPlaneServiceStub(channel).SetBreakerState(
            cp.SetBreakerStateRequest(name=name, state=state, reason="test", create=True), timeout=10
        )


#: Background load for the "busy" variant: one spinning process per core.
_BURN = "import time\nwhile True: time.perf_counter()"


def breaker_propagation(s: Stack, trips: int = 30) -> dict[str, Any]:
    """Agent A's failures trip the breaker; time until agent B, another process, fails fast.

    B sends no traffic of its own while it waits (its successes would, rightly, keep a
    consecutive-failure breaker closed); it watches its local view and, once that says
    OPEN, makes one call, which must fail fast without reaching its upstream. Trips
    alternate between an idle machine and one with a spinning process per core (paused
    with SIGSTOP between busy trips), so both variants see the same machine otherwise."""
    service = "prop_llm"
    s.put_policy(
        service,
        failure_threshold=3,
        max_retries=0,
        wait_duration_secs=300,
        rate_limit_requests=10**9,
        timeout_secs=5,
    )
    healthy = python("tests.support.upstream", "healthy")
    burners = [Proc([sys.executable, "-c", _BURN]) for _ in range(os.cpu_count() or 2)]
    procs: list[Proc] = [healthy, *burners]
    samples: dict[str, list[float]] = {"idle": [], "busy": []}
    loads: dict[str, list[float]] = {"idle": [], "busy": []}
    try:
        _pause(burners, True)
        healthy_address = f"127.0.0.1:{healthy.port()}"
        set_mode(s.upstream_address, "fail", code="UNAVAILABLE")
        a = agent("agent-a", s.plane_address, s.upstream_address, service)
        b = agent("agent-b", s.plane_address, healthy_address, service)
        procs += [a, b]
        for trip in range(2 * trips):
            variant = "busy" if trip % 2 else "idle"
            _pause(burners, variant == "idle")
            b.send("until_fails_fast")
            time.sleep(0.05)
            tripped = a.ask("call 3")
            seen = b.ask("noop")
            loads[variant].append(os.getloadavg()[0])
            _pause(burners, True)
            if seen["first_rejection"] is not None and seen["outcome"] == "CircuitBreakerOpen":
                samples[variant].append(seen["first_rejection"] - tripped["t_last"])
            _set_breaker(s, service, cp.BREAKER_STATE_CLOSED)
            a.ask("until_state CLOSED")
            b.ask("until_state CLOSED")
        set_mode(s.upstream_address, "ok")
    finally:
        for proc in procs:
            proc.kill()
    return {v: _propagation_row(v, trips, got, loads[v]) for v, got in samples.items()}


def _pause(procs: list[Proc], stopped: bool) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGSTOP if stopped else signal.SIGCONT)


def _propagation_row(variant: str, trips: int, samples: list[float], loads: list[float]) -> dict[str, Any]:
    return {
        "variant": variant,
        "trips": trips,
        "measured": len(samples),
        "p50_ms": percentile(samples, 50) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "max_ms": max(samples) * 1e3 if samples else float("nan"),
        "load_1m": median(loads),
    }


def config_propagation(s: Stack, agents: int = 50, changes: int = 10) -> dict[str, Any]:
    """A policy change written to etcd, until each of ``agents`` connected agents enforces it."""
    service = "prop_config"
    s.put_policy(service, timeout_secs=1)
    per_proc = agents // 2
    fleet = [
        Proc([sys.executable, "-m", "bench.fleet_proc", s.plane_address, str(per_proc), f"f{i}"])
        for i in range(2)
    ]
    try:
        for proc in fleet:
            assert '"ready": true' in proc.wait_for('{"ready"', timeout=120)
        key = f"/mission-control/v1/policies/{service}"

        async def put(value: float) -> float:
            store = await EtcdStore([s.etcd.endpoint]).connect()
            try:
                started = time.time()
                await store.put(key, f'{{"service": "{service}", "timeout_secs": {value}}}'.encode())
                return started
            finally:
                await store.close()

        samples: list[float] = []
        slowest: list[float] = []
        missing = 0
        for i in range(changes):
            value = 2.0 + i
            for proc in fleet:
                proc.ask(f"watch {service} {value}")
            started = asyncio.run(put(value))
            seen = [proc.ask("noop", timeout=60) for proc in fleet]
            times = [t - started for r in seen for t in r["seen"]]
            missing += sum(r["missing"] for r in seen)
            samples += times
            slowest.append(max(times))
    finally:
        for proc in fleet:
            proc.kill()
    return {
        "agents": agents,
        "changes": changes,
        "missing": missing,
        "p50_ms": percentile(samples, 50) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "all_agents_p50_ms": median(slowest) * 1e3,
        "all_agents_max_ms": max(slowest) * 1e3,
    }


def capacity(
    s: Stack, seconds: float = 5.0, flood_streams: int = 10, idle_agents: int = 1000
) -> dict[str, Any]:
    """Outcome batches ingested per second, and idle agents held, with the plane's CPU and RSS."""
    s.put_policy("load", failure_threshold=10**6, rate_limit_requests=10**9)
    pid = s.pid()

    def errors() -> int:
        with grpc.insecure_channel(s.plane_address) as channel:
            stats_ = cp_grpc.ControlPlaneServiceStub(channel).GetErrorStatistics(
                cp.GetErrorStatisticsRequest(), timeout=10
            )
        return int(stats_.statistics.errors_by_service.get("load", 0))

    before_errors, cpu0, t0 = errors(), cpu_seconds(pid), time.monotonic()
    flood = [
        Proc(
            [
                sys.executable,
                "-m",
                "bench.load_proc",
                s.plane_address,
                str(flood_streams // 2),
                str(seconds),
                "flood",
            ]
        )
        for _ in range(2)
    ]
    sent = sum(p.ask("noop", timeout=seconds + 120).get("batches", 0) for p in flood)
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    time.sleep(0.5)
    ingested = errors() - before_errors  # each batch carries one failure
    for p in flood:
        p.kill()
    rss_before = rss_kib(pid)
    idle = [
        Proc([sys.executable, "-m", "bench.load_proc", s.plane_address, str(idle_agents // 2), "20", "idle"])
        for _ in range(2)
    ]
    connected = sum(p.ask("noop", timeout=120)["connected"] for p in idle)
    time.sleep(1.0)
    rss_after = rss_kib(pid)
    for p in idle:
        p.kill()
    return {
        "flood_streams": flood_streams,
        "batches_sent": sent,
        "batches_ingested": ingested,
        "outcomes_per_s": ingested * 10 / elapsed,
        "batches_per_s": ingested / elapsed,
        "plane_cpu_share": cpu / elapsed,
        "idle_agents_connected": connected,
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "rss_per_agent_kib": (rss_after - rss_before) / max(1, connected),
    }


def amplification(s: Stack, calls: int = 200) -> dict[str, Any]:
    """Calls reaching a fully failed upstream per call the application made."""
    set_mode(s.upstream_address, "fail", code="UNAVAILABLE")
    results = {}
    for label, budget in (
        ("with retry budget (default)", RetryBudget()),
        ("without budget", RetryBudget(ratio=100, min_retries_per_second=1000)),
    ):
        policy = ServicePolicy(
            service="amplified",
            max_retries=3,
            failure_threshold=10**6,
            rate_limit_requests=10**9,
            backoff=Backoff(initial_secs=0.001, max_secs=0.001, jitter=0),
            retry_budget=budget,
        )
        mc = MissionControl("amp-agent", config={"amplified": policy})
        channel = grpc.intercept_channel(
            grpc.insecure_channel(s.upstream_address), client_interceptor(mc, service="amplified")
        )
        stub = pb_grpc.EchoServiceStub(channel)
        stats(s.upstream_address, reset=True)
        for _ in range(calls):
            with contextlib.suppress(MissionControlError, grpc.RpcError):
                stub.Echo(pb.EchoRequest(text="x"), timeout=5)
        results[label] = stats(s.upstream_address).calls / calls
        channel.close()
    set_mode(s.upstream_address, "ok")
    return {"app_calls": calls, "max_retries": 3, "amplification": results}


def failover(rounds: int = 5) -> dict[str, Any]:
    """Three replicas on a three-member etcd cluster: the leader is killed; time until the next
    transition is decided (a fresh breaker reported on a survivor is OPEN)."""
    import json
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from mission_control.server.etcd_process import EtcdCluster

    from tests.support.procs import control_plane

    samples: list[float] = []
    parts: list[dict[str, float]] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mc-failover-") as tmp:
        cluster = EtcdCluster(Path(tmp)).start()
        endpoints = ",".join(cluster.endpoints)
        replicas = {n: control_plane(endpoints, "/failover", "--instance-id", n) for n in ("r1", "r2", "r3")}
        try:
            for round_ in range(rounds):
                leader = _leader(shutil.which("etcdctl") or "etcdctl", cluster.endpoints, subprocess, json)
                survivor = next(n for n in replicas if n != leader)
                stub = cp_grpc.ControlPlaneServiceStub(grpc.insecure_channel(replicas[survivor][1]))
                service = f"failover-{round_}"
                stub.PutPolicy(cp.PutPolicyRequest(policy=_policy(service)), timeout=10)
                watch = _LeaderWatch(shutil.which("etcdctl") or "etcdctl", cluster.endpoints[0])
                loads.append(os.getloadavg()[0])
                killed = time.monotonic()
                replicas[leader][0].kill()
                hello = cp.ConnectRequest(hello=cp.AgentHello(agent_id=f"prober-{round_}"))
                failure = cp.ConnectRequest(
                    outcomes=cp.OutcomeBatch(summaries=[cp.OutcomeSummary(service=service, failures=1)])
                )
                call = stub.Connect(iter([hello, failure]), timeout=60)
                while True:
                    try:
                        got = stub.GetBreaker(cp.GetBreakerRequest(name=service), timeout=5).breaker.state
                    except grpc.RpcError:
                        got = 0
                    if got == cp.BREAKER_STATE_OPEN:
                        samples.append(time.monotonic() - killed)
                        parts.append(watch.parts(killed, samples[-1]))
                        break
                    if time.monotonic() - killed > 30:
                        break
                    time.sleep(0.01)
                call.cancel()
                watch.stop()
                replicas[leader] = control_plane(endpoints, "/failover", "--instance-id", leader)
        finally:
            for proc, _ in replicas.values():
                proc.kill()
            cluster.stop()
    return {
        "rounds": rounds,
        "measured": len(samples),
        "lease_ttl_s": 3,
        "load_1m": median(loads) if loads else None,
        "p50_s": percentile(samples, 50),
        "p99_s": percentile(samples, 99),
        # kill -> the dead leader's key gone with its lease -> a survivor's key written ->
        # the transition decided (medians; None where the watch missed an event)
        **{
            f"{k}_p50_s": median([p[k] for p in parts if k in p]) if any(k in p for p in parts) else None
            for k in ("lease_gone", "campaign", "decide")
        },
        "parts": parts,
    }


class _LeaderWatch:
    """``etcdctl watch`` on the leader key, each event stamped when it was read."""

    def __init__(self, etcdctl: str, endpoint: str) -> None:
        import subprocess
        import threading

        self.events: list[tuple[float, str]] = []
        args = [etcdctl, f"--endpoints={endpoint}", "watch", "/failover/leader"]
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={"ETCDCTL_API": "3"})
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)  # the watch is registered (etcdctl says nothing when it is)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if line.strip() in ("PUT", "DELETE"):
                self.events.append((time.monotonic(), line.strip()))

    def parts(self, killed: float, decided: float) -> dict[str, float]:
        gone = next((t for t, kind in self.events if kind == "DELETE"), None)
        elected = next((t for t, kind in self.events if kind == "PUT" and gone and t >= gone), None)
        found: dict[str, float] = {}
        if gone is not None:
            found["lease_gone"] = gone - killed
            if elected is not None:
                found["campaign"] = elected - gone
                found["decide"] = decided - (elected - killed)
        return found

    def stop(self) -> None:
        self.popen.kill()
        self.popen.wait()


def _policy(service: str) -> Any:
    from mission_control.resilience.v1 import policy_pb2

    return policy_pb2.ServicePolicy(service=service, failure_threshold=1, wait_duration_secs=300)


def _leader(etcdctl: str, endpoints: list[str], subprocess: Any, json: Any) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = subprocess.run(
            [etcdctl, f"--endpoints={','.join(endpoints)}", "get", "/failover/leader", "--print-value-only"],
            capture_output=True,
            text=True,
            timeout=10,
            env={"ETCDCTL_API": "3"},
        )
        if result.stdout.strip():
            return str(json.loads(result.stdout)["instance"])
        time.sleep(0.1)
    raise RuntimeError("no leader elected")


def fleet_limits(s: Stack, seconds: float = 6.0, calls: int = 20_000) -> dict[str, Any]:
    """A fleet-wide limit leased to 10 agents in 2 processes: how close the fleet stays to the
    limit; and the per-call cost of a fleet-scoped limit, a local one, and one RPC per call."""
    from mission_control.client.policy import FleetLimits
    from mission_control.resilience.v1 import policy_pb2

    from tests.server.test_fleet_limits import worst_window

    limit, window, period = 200, 2.0, 0.5
    policy = policy_pb2.ServicePolicy(
        service="bench_shared",
        rate_limit_requests=limit,
        rate_limit_window_secs=window,
        failure_threshold=10**6,
        max_retries=0,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=period),
    )
    with grpc.insecure_channel(s.plane_address) as channel:
        stub = cp_grpc.ControlPlaneServiceStub(channel)
        stub.PutPolicy(cp.PutPolicyRequest(policy=policy), timeout=10)
    procs = [
        Proc(
            [
                sys.executable,
                "-m",
                "tests.support.quota_proc",
                s.plane_address,
                "bench_shared",
                f"q{i}",
                ",".join(["40"] * 5),
            ]
        )
        for i in range(2)
    ]
    try:
        for proc in procs:
            proc.wait_for('{"ready"', timeout=60)
        for proc in procs:
            proc.send(f"run {seconds}")
        started = time.time()
        results = [proc.ask("noop", timeout=seconds + 60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    times = [t for r in results for ts in r["admitted"].values() for t in ts if t > started + 1.0]
    measured = seconds - 1.0
    admitted_rate = len(times) / measured
    # per-call cost, in this process: the decision alone around a no-op function
    local = ServicePolicy(service="cost", rate_limit_requests=10**9, failure_threshold=10**6)
    fleet = local.replace(fleet=FleetLimits(rate_limit=True, lease_secs=60))
    costs: dict[str, float] = {}
    for label, pol in (("local token bucket", local), ("fleet lease", fleet)):
        mc = MissionControl("cost-agent", config={"cost": pol}, telemetry=False)
        state = mc.view.get("cost")
        for budget in state.leased.values():  # a lease big enough for the whole run
            budget.apply(0, 10**12, mc.view.clock(), 60, 1, 10**12)
        started_cpu = time.process_time()
        for _ in range(calls):
            mc.executor.run("cost", lambda _left: None, operation="op")
        costs[label] = (time.process_time() - started_cpu) / calls * 1e6
    with grpc.insecure_channel(s.plane_address) as channel:
        stub = cp_grpc.ControlPlaneServiceStub(channel)
        ask = cp.GetPolicyRequest(service="cost")
        n = calls // 20
        started_cpu = time.process_time()
        for _ in range(n):
            stub.GetPolicy(ask, timeout=10)
        costs["one RPC per call"] = (time.process_time() - started_cpu) / n * 1e6
    return {
        "agents": 10,
        "limit_per_s": limit / window,
        "admitted_per_s": admitted_rate,
        "utilisation": admitted_rate / (limit / window),
        "worst_window_vs_limit": worst_window(times, window) / limit,
        "cost_us": costs,
    }
