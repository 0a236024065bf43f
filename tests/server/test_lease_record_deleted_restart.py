"""I4 when the fleet-lease epoch record is deleted by hand (``etcdctl del``) while every
replica restarts (real etcd, two control-plane processes, agent processes).

An agent cut off from every replica spends its last lease until its horizon. The replicas
started again remember no record, and the store holds none, only its history token: a
leader that took the fleet for a new one split the whole limit at once to a new agent,
beside the cut-off agent's spending. Fixed: the token says the fleet was leased in its
history, so the leader warms up as after an unknown past — and leases the whole limit
once the horizon of any earlier lease has passed."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.lease_epoch import RECORD, RECORD_AHEAD_SECS
from mission_control.server.store_history import KEY as HISTORY

from tests.conftest import etcd_server, prefix, spawned  # noqa: F401
from tests.support.admitted_seconds import per_second
from tests.support.etcd import etcdctl
from tests.support.fleets import leader_of
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane
from tests.support.replicas import (
    fleet_limit,
    spending_agents,
    start_replicas,
    stop_agents,
    usage,
    worst_window,
)
from tests.support.tcp_pause import proxy_in_thread

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "deleted", 0.5, 100, 2.0, 20.0
UNITS = LIMIT * PERIOD / WINDOW  # 25 a period
RATE = 60.0  # each agent asks for more than the whole limit (50/s)


@pytest.mark.timeout(300)
def test_a_record_deleted_while_every_replica_restarts_keeps_the_window_bound(
    etcd_server: EtcdProcess,  # noqa: F811
    prefix: str,  # noqa: F811
    spawned: list[Proc],  # noqa: F811
) -> None:
    endpoint = etcd_server.endpoint
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON)
    fleet = start_replicas(endpoint, prefix, spawned, ("r1", "r2"), policy)
    with proxy_in_thread() as (proxy, loop):
        proxy.target = fleet.addresses["r1"]
        (cut,) = spending_agents(spawned, SERVICE, RATE, ("cut", proxy.address))
        poll(lambda: (u := usage(fleet.addresses["r1"], SERVICE)) is not None and u.leased >= UNITS - 1)
        time.sleep(2 * PERIOD)  # it holds a lease of (nearly) the whole limit
        assert etcdctl(endpoint, "get", f"{prefix}/{HISTORY}", "--print-value-only").strip()
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)  # cut off for good
        cut_at = time.time()
        etcdctl(endpoint, "del", f"{prefix}/{RECORD}")
        term = leader_key_created(endpoint, prefix)
        for proc in fleet.procs.values():
            proc.kill()
        addresses = {}
        for name in ("r1", "r2"):  # (the first to start leads once the old term's key expired)
            proc, addresses[name] = control_plane(endpoint, prefix, "--instance-id", name)
            spawned.append(proc)
            if name == "r1":
                poll(lambda: leader_key_created(endpoint, prefix) not in (0, term), timeout=60)
                took_over = time.time()
        (new,) = unleased_agent(spawned, addresses[leader_of(endpoint, prefix) or "r1"])
        # past the cut-off agent's horizon, and past the longest warm-up, and a window more;
        # a leader that loses its lease (etcd slow to answer on a busy machine) and takes the
        # fleet again warms up again: the warm-up is counted from the last term seen
        last = {"term": leader_key_created(endpoint, prefix), "at": took_over}

        def warmed_up() -> float:
            term = leader_key_created(endpoint, prefix)
            if term not in (0, last["term"]):
                last["term"], last["at"] = term, time.time()
            ends = max(cut_at + HORIZON, last["at"] + RECORD_AHEAD_SECS + HORIZON) + 2 * PERIOD
            return ends if time.time() >= ends + WINDOW + 2.0 else 0.0

        ends = poll(warmed_up, timeout=150)
        results = dict(zip(("cut", "new"), stop_agents([cut, new]), strict=True))
    shown = per_second(
        results, {"cut": cut_at, "restarted": took_over, "last-term": last["at"], "horizon": ends}
    )
    worst = worst_window([t for r in results.values() for t in r["admitted"]], WINDOW)
    # the case at stake: the cut-off agent still spent its last lease under the new leader
    assert any(t > took_over + 2 for t in results["cut"]["admitted"]), shown
    assert worst <= LIMIT + UNITS, f"{worst} admitted in one {WINDOW} s window\n{shown}"
    # not a stall: the new agent is leased (nearly) the whole limit once the warm-up is over
    late = [t for t in results["new"]["admitted"] if ends < t <= ends + WINDOW]
    assert len(late) >= LIMIT / 2, f"the new agent admitted {len(late)} after the warm-up\n{shown}"


def leader_key_created(endpoint: str, under: str) -> int:
    """The store revision that created the leader key now (0: none): a new one, a new term."""
    found = json.loads(etcdctl(endpoint, "get", f"{under}/leader", "-w", "json"))
    return int(found["kvs"][0]["create_revision"]) if found.get("kvs") else 0


def unleased_agent(procs: list[Proc], address: str) -> list[Proc]:
    """The new agent, once connected (the leader may lease it nothing while it warms up)."""
    args = [sys.executable, "-m", "tests.support.horizon_agent", "new", address, SERVICE, str(RATE)]
    proc = Proc(args)
    procs.append(proc)
    ready = proc.wait_for('{"ready"', timeout=60)
    assert '"ready": true' in ready, ready
    return [proc]
