"""Agents behind a follower replica get the same share of a fleet limit as agents connected
to the leader: the leader splits max-min fair among agents, not replicas, and leases the
follower its agents' sum. Real processes: a leader and a follower on a real etcd, one agent
process on the leader and two on the follower, each asking for more than a third. What
counts is what the agents admitted."""

from __future__ import annotations

import time

import pytest
from mission_control.server.etcd_process import EtcdProcess

from tests.support.procs import Proc
from tests.support.replicas import fleet_limit, spending_agents, start_replicas, stop_agents, wait_usage

SERVICE, PERIOD, LIMIT, WINDOW = "horizon", 0.5, 120, 2.0  # 60 calls/s for the fleet
RATE = 40.0  # each of three agents asks for twice its equal share
SPAN = 4.0  # seconds of steady split that are counted


def placement(answer: dict, start: float) -> str:  # type: ignore[type-arg]
    """How late the agent placed the starts of the periods counted (ms after their start by
    the wall clock), and what it admitted in each: shown with the figures."""
    leases = [lease for lease in answer["leases"] if start <= lease[1] / 1000 < start + SPAN]
    late = sorted(round((got + starts_in - period / 1000) * 1000) for got, period, _, starts_in in leases)
    per_period = [
        sum(1 for t in answer["admitted"] if period / 1000 <= t < period / 1000 + PERIOD)
        for _, period, _, _ in leases
    ]
    units = [round(lease[2]) for lease in leases]
    return f"placed late {late} ms, units {units}, admitted {per_period}"


@pytest.mark.timeout(120)
def test_agents_behind_a_follower_get_the_share_of_agents_on_the_leader(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    policy = fleet_limit(SERVICE, LIMIT, WINDOW, PERIOD)
    addresses = start_replicas(etcd_server.endpoint, prefix, spawned, ("r1", "r2"), policy).addresses
    names = ["on-leader", "behind-0", "behind-1"]
    wanted = zip(names, (addresses["r1"], addresses["r2"], addresses["r2"]), strict=True)
    agents = spending_agents(spawned, SERVICE, RATE, *wanted)
    # the leader counts three agents (one here, two relayed) and leases the whole limit
    wait_usage(addresses["r1"], SERVICE, lambda u: u.agents == 3 and u.leased >= LIMIT * PERIOD / WINDOW - 1)
    time.sleep(2 * PERIOD)  # the leases made from those demands are in force
    start = time.time()
    time.sleep(SPAN)
    got, refused, placed = {}, {}, {}
    for name, answer in zip(names, stop_agents(agents), strict=True):
        got[name] = sum(1 for t in answer["admitted"] if start <= t < start + SPAN)
        refused[name] = sum(1 for t in answer["refusals"] if start <= t < start + SPAN)
        placed[name] = placement(answer, start)
    # An agent starved of CPU on a busy machine calls, so asks, and so gets, less than its
    # share (50 against 76 at load 20): max-min fair, what it asked is all it is owed. The
    # split is judged among the agents the limit held back (a fifth of their calls
    # refused or more): those must have got about the same.
    held_back = [n for n in names if refused[n] >= 0.2 * (got[n] + refused[n])]
    shown = f"admitted {got}, refused {refused}; {placed}"
    print(shown)
    assert held_back, f"the limit held back no agent: {shown}"  # each asks twice its share
    # split per replica, the agent on the leader got twice what each one behind the
    # follower did (121 against 56 and 56, 2.16x); per agent, about the same
    leading = got["on-leader"]
    for name in ("behind-0", "behind-1"):
        if name in held_back:
            assert leading <= 1.75 * got[name], f"{name} got less than the agent on the leader: {shown}"
    equal = LIMIT / WINDOW * SPAN / 3  # 80 each
    for name in held_back:
        assert got[name] >= 0.6 * equal, f"{name} held back below an equal share {equal:g}: {shown}"
    asked = sum(got.values()) + sum(refused.values())
    fleet = LIMIT / WINDOW * SPAN
    assert sum(got.values()) >= 0.75 * min(fleet, asked), f"the fleet {shown} in {SPAN:g} s"
