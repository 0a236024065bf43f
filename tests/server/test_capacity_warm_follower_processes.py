"""A new agent behind a follower does not end a new leader's warm-up while an agent the
earlier leader counted is cut off and spending its last lease (I4 across a failover).

Real processes: three replicas on a real etcd; z knows r1 only, x knows r3 only, both
leased by r1 (two agents). r3 is paused while r1 is killed, so r2 leads and r3 follows it;
z never reaches a control plane again and spends its last lease until its horizon. x is
back through r3, then y, a new agent, joins r3: r3 speaks for two agents of which one was
counted. What counts is what the agents admitted, in every window."""

from __future__ import annotations

import time

import pytest
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
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

SERVICE, PERIOD, LIMIT, WINDOW, HORIZON = "mixed", 0.5, 100, 2.0, 12.0
UNITS = LIMIT * PERIOD / WINDOW  # the fleet's units per period: 25
RATE = 40.0  # each agent asks for more than the whole limit's half: 40/s against 50/s


@pytest.mark.timeout(180)
def test_a_new_agent_behind_a_follower_does_not_end_the_warm_up_across_a_failover(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD, horizon=HORIZON)
    fleet = start_replicas(etcd_server.endpoint, prefix, spawned, ("r1", "r2", "r3"), policy)
    addresses = fleet.addresses
    z, x = spending_agents(spawned, SERVICE, RATE, ("z", addresses["r1"]), ("x", addresses["r3"]))
    wait_usage(addresses["r1"], SERVICE, lambda u: u.agents == 2 and u.leased >= UNITS - 1)
    time.sleep(2 * PERIOD)  # the leases made for both are in force: each heard "two agents"

    with paused(fleet.procs["r3"]):  # r3 does not lead next
        fleet.procs["r1"].kill()  # z is cut off for good
        killed = time.time()
        fleet.wait_leader("r2")
    took_over = time.time()
    # x is back through r3 (alone first: the demand speaks for one agent counted)
    wait_usage(addresses["r2"], SERVICE, lambda u: u.agents == 1)
    (y,) = spending_agents(spawned, SERVICE, RATE, ("y", addresses["r3"]))
    joined = time.time()
    wait_usage(addresses["r2"], SERVICE, lambda u: u.agents == 2)
    # r2 splits the whole limit once z may no longer spend (its horizon, counted from
    # the last lease r1 may have sent); the agents run on past z's horizon
    wait_usage(addresses["r2"], SERVICE, lambda u: u.kept_aside == 0 and u.leased >= UNITS - 1, timeout=60)
    poll(lambda: time.time() >= killed + HORIZON + 2 * PERIOD, timeout=60)
    split = time.time()
    time.sleep(2 * WINDOW)  # a whole window of the whole split
    results = dict(zip(("z", "x", "y"), stop_agents([z, x, y]), strict=True))

    events = {"r1 killed": killed, "r2 leads": took_over, "y joined": joined, "split": split}
    shown = per_second(results, events)
    print(shown)
    # z spent its last lease while y was there: the case this shows
    assert any(t > joined for t in results["z"]["admitted"]), shown
    admitted = [t for r in results.values() for t in r["admitted"]]
    worst = worst_window(admitted, WINDOW)
    assert worst <= LIMIT + UNITS, (
        f"{worst} admitted in one {WINDOW} s window (limit {LIMIT} + {UNITS:g})\n{shown}"
    )
    # the warm-up ended: x and y share the whole limit
    after = [t for name in ("x", "y") for t in results[name]["admitted"] if t >= split + PERIOD]
    assert worst_window(after, WINDOW) >= 0.75 * LIMIT, shown
