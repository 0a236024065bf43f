"""I4 with real processes: a follower's link to the leader that comes back and breaks again
before the leader's next lease. The follower's agents spend their last leases until their
horizon all the while; the leader keeps that aside through both breaks, so the upstream
never receives more than the limit plus one period's units in any window.

r1 leads, advertised through a gate the follower r2 links through; two agents call through
r1, two through r2, all wanting more than the limit. Each flap: the gate cuts the link and
refuses until the leader has let r2 go, lets it through until the leader holds r2's first
demand on the new stream, then cuts it and refuses again past the horizon."""

from __future__ import annotations

import time

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.conftest import etcd_server, prefix, spawned  # noqa: F401
from tests.server.test_lease_uncounted_replica import _spenders
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane, python
from tests.support.replicas import fleet_limit, stop_agents, worst_window
from tests.support.tcp_pause import PausableProxy, proxy_in_thread
from tests.support.upstream import stats

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "uncounted", 0.5, 100, 2.0, 4.0
UNITS = LIMIT * PERIOD / WINDOW  # 25 a period
FLAPS = 3


class Figures:
    """The leader's figures for the limit, over one channel (asked as often as it takes)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.ControlPlaneServiceStub(self.channel)

    def agents(self) -> int:
        answer = self.stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5)
        return next((u.agents for u in answer.statistics.fleet_limits if u.service == SERVICE), 0)

    def until_agents(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.agents() != count:
            assert time.monotonic() < deadline, f"the leader never counted {count} agents"
            time.sleep(0.005)


def _until(end: float) -> None:
    poll(lambda: time.monotonic() >= end, timeout=60)


def _cut(gate: PausableProxy, loop: object, refusing: bool) -> None:
    gate.refusing = refusing
    loop.call_soon_threadsafe(gate.cut)  # type: ignore[attr-defined]


@pytest.mark.timeout(300)
def test_a_follower_link_back_and_broken_again_before_a_lease_keeps_its_agents_aside(
    etcd_server: EtcdProcess,  # noqa: F811
    prefix: str,  # noqa: F811
    spawned: list[Proc],  # noqa: F811
) -> None:
    etcd = etcd_server.endpoint
    up = python("tests.support.upstream", "up")
    spawned.append(up)
    upstream = f"127.0.0.1:{up.port()}"
    with proxy_in_thread() as (gate, loop):
        listen = f"127.0.0.1:{free_port()}"
        gate.target = listen
        r1, a1 = control_plane(
            etcd, prefix, "--instance-id", "r1", "--listen", listen, "--advertise", gate.address
        )
        spawned.append(r1)
        poll(lambda: leader_of(etcd, prefix) == "r1", timeout=30)
        r2, a2 = control_plane(etcd, prefix, "--instance-id", "r2")
        spawned.append(r2)
        put_policy(a1, fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON))
        wanted = (("k1", a1), ("k2", a1), ("f1", a2), ("f2", a2))
        agents = _spenders(spawned, upstream, *wanted)
        figures = Figures(a1)
        figures.until_agents(4, timeout=60)
        first, cuts = time.monotonic(), []
        for _ in range(FLAPS):
            _cut(gate, loop, refusing=True)
            figures.until_agents(2)  # the leader let r2's stream go
            gate.refusing = False
            figures.until_agents(4)  # r2's first demand on a new stream
            _cut(gate, loop, refusing=True)
            cuts.append((time.monotonic(), time.time()))
            _until(time.monotonic() + HORIZON + 2 * PERIOD + WINDOW)  # past the horizon
            gate.refusing = False
            figures.until_agents(4)
            _until(time.monotonic() + 4 * PERIOD)  # r2's agents spend fresh leases again
        figures.channel.close()
        results = dict(zip(("k1", "k2", "f1", "f2"), stop_agents(agents), strict=True))
    arrivals = sorted(t for t in stats(upstream).arrivals if t > first)
    worst = worst_window(arrivals, WINDOW)
    shown = []
    for cut, wall in cuts:
        seconds = [sum(1 for t in arrivals if cut + s <= t < cut + s + 1) for s in range(int(HORIZON) + 2)]
        behind = sum(
            1 for name in ("f1", "f2") for t in results[name]["admitted"] if wall < t < wall + HORIZON
        )
        shown.append(f"from a second break: {seconds} a second, {behind} through r2 in {HORIZON:g} s")
    text = "\n".join(shown)
    print(text)
    assert worst <= LIMIT + UNITS, f"{worst} in one {WINDOW} s window (limit {LIMIT} + {UNITS:g})\n{text}"
