"""I4 with real processes: an agent that moves from a follower to another follower which
reaches etcd but never the leader is counted by nobody there, so the follower it left keeps
what it may spend aside until its horizon; the upstream never receives more than the limit
plus one period's units in any window.

r1 leads, advertised through a gate; r2 links to it through the gate, which then refuses
new connections, so r3 (started after) never links. m calls through r2, then r3 (a proxy
it knows moves); k knows r2, l knows r1. All three want more than the limit."""

from __future__ import annotations

import time

import pytest
from mission_control.server.etcd_process import EtcdProcess, free_port

from tests.conftest import etcd_server, prefix, spawned  # noqa: F401
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane, python
from tests.support.replicas import connected_agents, fleet_limit, stop_agents, usage, worst_window
from tests.support.tcp_pause import proxy_in_thread
from tests.support.upstream import stats

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON, RATE = "uncounted", 0.5, 100, 2.0, 8.0, 60.0
UNITS = LIMIT * PERIOD / WINDOW  # 25 a period


def _spenders(procs_out: list[Proc], upstream: str, *wanted: tuple[str, str]) -> list[Proc]:
    procs = []
    for agent_id, address in wanted:
        args = ("tests.support.upstream_spender", agent_id, address, upstream, SERVICE, str(RATE))
        procs.append(python(*args))
        procs_out.append(procs[-1])
    for proc in procs:
        ready = proc.wait_for('{"ready"', timeout=60)
        assert '"ready": true' in ready, ready
    for proc in procs:
        proc.wait_for('{"first"', timeout=30)
    return procs


@pytest.mark.timeout(240)
def test_an_agent_moved_to_a_follower_no_leader_counts_stays_kept_aside(
    etcd_server: EtcdProcess,  # noqa: F811
    prefix: str,  # noqa: F811
    spawned: list[Proc],  # noqa: F811
) -> None:
    etcd = etcd_server.endpoint
    up = python("tests.support.upstream", "up")
    spawned.append(up)
    upstream = f"127.0.0.1:{up.port()}"
    with proxy_in_thread() as (gate, _), proxy_in_thread() as (hop, hop_loop):
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
        poll(lambda: connected_agents(a1) >= 1, timeout=30)  # r2's relay, through the gate
        gate.refusing = True  # no other link gets through
        r3, a3 = control_plane(etcd, prefix, "--instance-id", "r3")
        spawned.append(r3)
        hop.target = a2
        k, el, m = _spenders(spawned, upstream, ("k", a2), ("l", a1), ("m", hop.address))
        poll(lambda: (u := usage(a1, SERVICE)) is not None and u.agents == 3 and u.leased >= UNITS - 1)
        hop.target = a3
        hop_loop.call_soon_threadsafe(hop.cut)  # m leaves r2 for r3
        moved, moved_wall = time.monotonic(), time.time()
        poll(lambda: connected_agents(a3) >= 1, timeout=30)
        poll(lambda: time.monotonic() >= moved + HORIZON + 2 * PERIOD + WINDOW, timeout=60)
        linked = connected_agents(a1)  # l and r2's relay: r3's never got through
        results = dict(zip("klm", stop_agents([k, el, m]), strict=True))
    arrivals = sorted(t for t in stats(upstream).arrivals if t > moved)
    worst = worst_window(arrivals, WINDOW)
    per_second = [0] * (int(arrivals[-1] - moved) + 1 if arrivals else 0)
    for t in arrivals:
        per_second[int(t - moved)] += 1
    shown = f"upstream a second from the move: {per_second}"
    assert linked == 2, linked
    assert any(t > moved_wall + 1 for t in results["m"]["admitted"]), shown  # m spent on, unleased
    assert worst <= LIMIT + UNITS, f"{worst} in one {WINDOW} s window (limit {LIMIT} + {UNITS:g})\n{shown}"
