"""Agents cut off from every control plane for good stop spending the fleet limit at the
same horizon at which the new leader stops keeping their share aside (I4 across a
failover). Real processes: two replicas on a real etcd, four agents in processes of their
own, each knowing one replica's address only; the first leader is paused past its leader
lease and resumed, then the second leader is killed, so two agents never reach a control
plane again. What counts is what the agents admitted, not what was leased."""

from __future__ import annotations

import time

import pytest
from mission_control.server.etcd_process import EtcdProcess

from tests.support.procs import Proc, paused
from tests.support.replicas import (
    fleet_limit,
    per_second,
    spending_agents,
    start_replicas,
    stop_agents,
    wait_usage,
    worst_window,
)

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "horizon", 0.5, 100, 2.0, 3.0
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period: 25
RATE = 40.0  # each agent asks for more than its share: 4 x 40/s against 50/s


@pytest.mark.timeout(120)
def test_agents_cut_off_for_good_and_the_new_leader_end_at_the_same_horizon(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON)
    fleet = start_replicas(etcd_server.endpoint, prefix, spawned, ("r1", "r2"), policy)
    first, second = fleet.procs["r1"], fleet.procs["r2"]
    # two agents know r1 only, two r2 only
    names = ["stays-0", "stays-1", "lost-0", "lost-1"]
    known = [fleet.addresses[r] for r in ("r1", "r1", "r2", "r2")]
    agents = spending_agents(spawned, SERVICE, RATE, *zip(names, known, strict=True))

    # r1 paused past its leader lease: r2 leads; r1 resumes and relays to r2
    with paused(first):
        stopped = time.time()
        fleet.wait_leader("r2")
        took_over = time.time()
    wait_usage(fleet.addresses["r2"], SERVICE, lambda u: u.agents == 4 and u.leased > 0)
    # r2 dies: the agents that know only r2 never reach a control plane again
    second.kill()
    killed = time.time()
    fleet.wait_leader("r1")
    # r1 keeps their share aside until their horizon, then splits the whole limit
    wait_usage(fleet.addresses["r1"], SERVICE, lambda u: u.kept_aside > 0)
    wait_usage(fleet.addresses["r1"], SERVICE, lambda u: u.kept_aside == 0 and u.leased >= UNITS - 1)
    split = time.time()
    time.sleep(2 * WINDOW)  # a whole window of the whole split, after its first period
    results = dict(zip(names, stop_agents(agents), strict=True))

    events = {"paused": stopped, "r2 leads": took_over, "r2 killed": killed, "split": split}
    print(per_second(results, events, cut_off=True))
    admitted = [t for r in results.values() for t in r["admitted"]]
    worst = worst_window(admitted, WINDOW)
    assert worst <= LIMIT + UNITS, f"{worst} admitted in one {WINDOW} s window (limit {LIMIT} + {UNITS:g})"
    for name in ("lost-0", "lost-1"):
        got = results[name]
        # past its horizon it refused, saying why, and admitted nothing after that
        later = [t for t in got["cut_off"] if t > killed]
        assert later, f"{name} never refused for want of a lease"
        assert all(t < min(later) for t in got["admitted"]), f"{name} spent after its horizon"
    # the agents still reached are split the whole limit again (what cut-off agents held)
    after = [t for name in ("stays-0", "stays-1") for t in results[name]["admitted"] if t >= split + PERIOD]
    split_worst = worst_window(after, WINDOW)
    assert split_worst >= 0.75 * LIMIT, f"{split_worst} of {LIMIT} per window after the split"
