"""I4 across a follower's restart under the same instance id (real processes): the agents
the old process kept as gone without a goodbye are unknown to the new one, so the leader
keeps aside what the old process's agents may spend (less what the agents back there hold)
until their horizon, instead of dropping it when the new process connects.

q reaches r3 through a proxy closed for good (cut off, spending its last lease); w (heavy)
reaches r3 through a proxy retargeted at r3's successor; v (heavy) is on the leader r1."""

from __future__ import annotations

import asyncio
import time

import pytest
from mission_control.server.etcd_process import EtcdProcess

from tests.conftest import etcd_server, prefix, spawned  # noqa: F401
from tests.support.admitted_seconds import per_second
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.replicas import (
    all_leased,
    assert_window_bound,
    connected_agents,
    fleet_limit,
    spending_agents,
    spent_for,
    start_replicas,
)
from tests.support.tcp_pause import proxy_in_thread

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "kept", 0.5, 100, 2.0, 12.0
UNITS = LIMIT * PERIOD / WINDOW  # 25 a period


@pytest.mark.timeout(180)
def test_restarted_follower_keeps_its_agents_cut_off(
    etcd_server: EtcdProcess,  # noqa: F811
    prefix: str,  # noqa: F811
    spawned: list[Proc],  # noqa: F811
) -> None:
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON)
    fleet = start_replicas(etcd_server.endpoint, prefix, spawned, ("r1", "r3"), policy)
    a = fleet.addresses
    with proxy_in_thread() as (qp, qloop), proxy_in_thread() as (wp, _wloop):
        qp.target = wp.target = a["r3"]
        q, w = spending_agents(spawned, SERVICE, 60.0, ("q", qp.address), ("w", wp.address))
        (v,) = spending_agents(spawned, SERVICE, 60.0, ("v", a["r1"]))
        all_leased(a["r1"], SERVICE, 3, UNITS, PERIOD)  # every agent holds a lease
        assert connected_agents(a["r3"]) == 2  # q and w
        asyncio.run_coroutine_threadsafe(qp.close(), qloop).result(10)  # q cut off for good
        cut = time.time()
        poll(lambda: connected_agents(a["r3"]) == 1)  # r3 has heard q's stream end
        restarted = time.time()
        fleet.procs["r3"].kill()
        r3b, r3b_at = control_plane(etcd_server.endpoint, prefix, "--instance-id", "r3")
        spawned.append(r3b)
        wp.target = r3b_at
        poll(lambda: time.time() >= cut + HORIZON + 2 * PERIOD, timeout=60)
        end = time.time()
        results = spent_for(WINDOW, {"q": q, "w": w, "v": v})
    shown = per_second(results, {"q cut": cut, "r3 restarted": restarted, "q horizon": end})
    assert any(t > restarted + 1 for t in results["q"]["admitted"]), shown  # q spent on
    assert_window_bound(results, WINDOW, LIMIT, UNITS, shown)
