"""I4 across a failover (real processes): an agent that leaves a follower for the new leader
while it warms up is counted once. The follower kept it as gone without a goodbye (holding
the earlier leader's lease); once the fleet roster shows it connected to another replica,
the follower drops it, so the leader does not count it both directly and through the
follower as back, and does not end the warm-up while z, cut off, still spends the earlier
leader's lease.

z knows r1 only (heavy); x reaches r3 through a proxy, then r2 (light); w knows r3 (heavy)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from mission_control.server.etcd_process import EtcdProcess

from tests.conftest import etcd_server, prefix, spawned  # noqa: F401
from tests.support.admitted_seconds import per_second
from tests.support.polling import poll
from tests.support.procs import Proc
from tests.support.replicas import (
    all_leased,
    assert_window_bound,
    connected_agents,
    fleet_limit,
    spending_agents,
    spent_for,
    start_replicas,
    usage,
)
from tests.support.tcp_pause import proxy_in_thread

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "moving", 0.5, 100, 2.0, 12.0
UNITS = LIMIT * PERIOD / WINDOW  # 25 a period


@pytest.mark.timeout(180)
def test_agent_moved_from_follower_to_new_leader_counted_once(
    etcd_server: EtcdProcess,  # noqa: F811
    prefix: str,  # noqa: F811
    spawned: list[Proc],  # noqa: F811
) -> None:
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON)
    fleet = start_replicas(etcd_server.endpoint, prefix, spawned, ("r1", "r2", "r3"), policy)
    a = fleet.addresses
    with proxy_in_thread() as (proxy, loop):
        proxy.target = a["r3"]
        z, w = spending_agents(spawned, SERVICE, 60.0, ("z", a["r1"]), ("w", a["r3"]))
        (x,) = spending_agents(spawned, SERVICE, 6.0, ("x", f"{proxy.address},{a['r2']}"))
        all_leased(a["r1"], SERVICE, 3, UNITS, PERIOD)  # every agent holds a lease of r1's
        r3 = fleet.procs["r3"]
        r3.popen.send_signal(signal.SIGSTOP)  # r3 does not take over
        try:
            fleet.procs["r1"].kill()  # z is cut off, spending r1's last lease
            killed = time.time()
            fleet.wait_leader("r2")
        finally:
            r3.popen.send_signal(signal.SIGCONT)
        took = time.time()
        poll(lambda: (u := usage(a["r2"], SERVICE)) is not None and u.agents == 2)
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)  # x leaves r3 for r2
        moved = time.time()
        poll(lambda: connected_agents(a["r2"]) >= 2, timeout=30)  # r3's relay and x
        poll(lambda: time.time() >= killed + HORIZON + 2 * PERIOD, timeout=60)
        split = time.time()
        results = spent_for(WINDOW, {"z": z, "w": w, "x": x})
    events = {"r1 killed": killed, "r2 leads": took, "x moved": moved, "z horizon": split}
    shown = per_second(results, events)
    assert any(t > moved + 1 for t in results["z"]["admitted"]), shown  # z spent on
    assert_window_bound(results, WINDOW, LIMIT, UNITS, shown)
