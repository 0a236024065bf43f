"""I4 when ``unleased_secs`` is lowered while an agent is cut off, and a replica started
after the lowering takes over within the old horizon (real etcd, two control-plane
processes, two agent processes each reaching one replica through a TCP proxy).

The cut-off agent knew the old horizon and spends its last lease until it passes; the new
leader never saw the old horizon in a policy, only in the fleet-lease epoch record. What
counts is what the agents admitted, not what was leased."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.replicas import worst_window
from tests.support.tcp_pause import PausableProxy

SERVICE, PERIOD, LIMIT, WINDOW = "lowered", 0.5, 100, 2.0
OLD, NEW = 30.0, 1.0  # unleased_secs before and after the operator lowered it
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period: 25
RATE = 60.0  # each agent asks for more than the whole limit (50/s)
#: The new leader must lead this long before the cut-off agent's old horizon passes, or the
#: case is not the one tested (its warm-up under the new horizon lasts up to ~6 s).
MARGIN = 8.0


class Proxies:
    """TCP proxies on an event loop of their own (the test itself blocks while polling)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: object) -> object:
        async def run() -> object:
            got = fn()  # type: ignore[operator]
            return await got if asyncio.iscoroutine(got) else got

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def start(self, target: str) -> PausableProxy:
        proxy: PausableProxy = self.call(lambda: PausableProxy().start())  # type: ignore[assignment]
        proxy.target = target
        return proxy

    def move(self, proxy: PausableProxy, target: str) -> None:
        """Every connection through ``proxy`` reset; new ones reach ``target``."""

        def moved() -> None:
            proxy.target = target
            proxy.cut()

        self.call(moved)

    def close(self, proxies: list[PausableProxy]) -> None:
        for proxy in proxies:
            self.call(proxy.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxies() -> Iterator[tuple[Proxies, list[PausableProxy]]]:
    made: list[PausableProxy] = []
    running = Proxies()
    yield running, made
    running.close(made)


def leader(endpoint: str, prefix: str) -> str | None:
    text = etcdctl(endpoint, "get", f"{prefix}/leader", "--print-value-only").strip()
    return json.loads(text)["instance"] if text else None


def lower_horizon(endpoint: str, prefix: str) -> None:
    """The operator's hand edit in etcd: the same policy, with the new horizon."""
    key = f"{prefix}/policies/{SERVICE}"
    value = json.loads(etcdctl(endpoint, "get", key, "--print-value-only"))
    value["fleet"]["unleased_secs"] = NEW  # stored with the proto's field names
    etcdctl(endpoint, "put", key, json.dumps(value))


def start_agent(spawned: list[Proc], agent_id: str, address: str) -> Proc:
    args = [sys.executable, "-m", "tests.support.horizon_agent", agent_id, address, SERVICE, str(RATE)]
    proc = Proc(args)
    spawned.append(proc)
    ready = proc.wait_for('{"ready"', timeout=60)
    assert '"ready": true' in ready, ready
    return proc


def horizon_of(address: str) -> float:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        got = stub.GetPolicy(pb.GetPolicyRequest(service=SERVICE), timeout=5).policy
    return got.fleet.unleased_secs


def leased_to(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        found = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics.fleet_limits
    return next((u.agents for u in found if u.service == SERVICE), 0)


@pytest.mark.timeout(180)
def test_a_replica_started_after_a_lowering_keeps_the_old_horizon_when_it_takes_over(
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    proxies: tuple[Proxies, list[PausableProxy]],
) -> None:
    endpoint, (running, made) = etcd_server.endpoint, proxies
    first, first_address = control_plane(endpoint, prefix, "--instance-id", "r1")
    spawned.append(first)
    poll(lambda: leader(endpoint, prefix) == "r1")
    policy = policy_pb2.ServicePolicy(
        service=SERVICE,
        rate_limit_requests=LIMIT,
        rate_limit_window_secs=WINDOW,
        fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=OLD),
    )
    with grpc.insecure_channel(first_address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
    # each agent knows one proxy only: "stays" is moved to the new leader, "cut" to nowhere
    stays_proxy, cut_proxy = running.start(first_address), running.start(first_address)
    made += [stays_proxy, cut_proxy]
    stays = start_agent(spawned, "stays", stays_proxy.address)
    cut = start_agent(spawned, "cut", cut_proxy.address)
    for proc in (stays, cut):
        proc.wait_for('{"first"', timeout=30)
    poll(lambda: leased_to(first_address) == 2)
    time.sleep(2 * PERIOD)  # both leased their half at least once more (the split, not a lone lease)

    running.move(cut_proxy, "127.0.0.1:1")  # nothing listens there: cut off for good
    cut_at = time.time()
    lower_horizon(endpoint, prefix)
    second, second_address = control_plane(endpoint, prefix, "--instance-id", "r2")
    spawned.append(second)
    assert horizon_of(second_address) == NEW  # r2 never saw the old horizon in a policy
    first.kill()
    running.move(stays_proxy, second_address)
    poll(lambda: leader(endpoint, prefix) == "r2", timeout=60)
    took_over = time.time()
    late = f"r2 led {took_over - cut_at:.1f} s after the cut: too late to tell"
    assert took_over < cut_at + OLD - MARGIN, late
    # past the cut-off agent's old horizon, and a window more
    time.sleep(max(0.0, cut_at + OLD + 2 * PERIOD + WINDOW - time.time()))
    results = {}
    for name, proc in (("stays", stays), ("cut", cut)):
        proc.send("stop")
        results[name] = json.loads(proc.wait_for('{"admitted"', timeout=30))

    admitted = [t for got in results.values() for t in got["admitted"]]
    worst = worst_window(admitted, WINDOW)
    per_second = {
        name: [sum(1 for t in got["admitted"] if int(t - cut_at) == s) for s in range(int(OLD) + 4)]
        for name, got in results.items()
    }
    shown = f"r2 led {took_over - cut_at:.1f} s after the cut; admitted per second after it: {per_second}"
    over = f"{worst} admitted in one {WINDOW} s window (limit {LIMIT} + {UNITS:g}); {shown}"
    assert worst <= LIMIT + UNITS, over
    # the cut-off agent did spend its last lease for the old horizon (else nothing was tested)
    late = [t for t in results["cut"]["admitted"] if t > took_over + MARGIN / 2]
    assert late, f"the cut-off agent spent nothing late in its old horizon; {shown}"
