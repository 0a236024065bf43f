"""Agents connected to a FOLLOWER replica are not left refusing a breaker the leader closed
from memory while etcd is away, with real processes: two control planes on a real etcd of
the test's own, two agent processes on each, a real upstream counting every call by kind.
The breaker goes OPEN (the upstream failing), the upstream serves again (each call taking a
second) and etcd stops answering (SIGSTOP) as soon as it holds the HALF_OPEN. The leader's
probes succeed and it closes the breaker in memory: its agents are told at once. The
follower, which learns states from etcd, still holds the HALF_OPEN; the leader, CLOSED,
grants it no permit. The follower now marks it (``Breaker.no_grants``): its agents hold it
for the probe TTL plus the timeout, then their own breakers decide and their calls reach
the upstream while etcd is still away. The old code: they refused every call for the whole
outage (20 s paused: 0 calls served but a fleet probe, ~780 refused per agent, while each
of the leader's agents was served 35). etcd then answers again: everyone ends CLOSED, with
no more than ``success_threshold`` fleet probes at once throughout."""

from __future__ import annotations

import os
import signal
import time

import pytest
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc
from tests.support.replicas import start_replicas

from .test_no_grants_outage import BOUND, HOLD, POLICY, SERVICE, not_fleet, paused, served_by

__all__ = ["paused"]  # the fixture, shared
CALLS = 10  # served to each of the follower's agents while etcd is away


@pytest.mark.timeout(300)
def test_agents_of_a_follower_are_not_held_by_a_half_open_the_leader_closed_from_memory(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], paused: list[bool]
) -> None:
    endpoint = etcd.endpoint
    assert etcd.pid is not None
    leaders = ["leader-agent-0", "leader-agent-1"]
    followers = ["follower-agent-0", "follower-agent-1"]
    with ProbeUpstream(1.0) as upstream:
        upstream.fail(True)
        fleet = start_replicas(endpoint, prefix, spawned, ("r1", "r2"), POLICY)
        on_leader = start_probers(spawned, leaders, fleet.addresses["r1"], upstream.address, SERVICE, 2)
        on_follower = start_probers(spawned, followers, fleet.addresses["r2"], upstream.address, SERVICE, 2)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        assert fleet.leader() == "r1"
        upstream.fail(False)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_HALF_OPEN", 60)
        os.kill(etcd.pid, signal.SIGSTOP)  # before any probe (a second each) has ended
        paused[0] = True
        stopped = time.monotonic()
        for proc in on_leader:  # closed by the leader, from memory
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED", 30)  # type: ignore[misc]
        try:
            poll(lambda: all(n >= CALLS for n in served_by(upstream.calls(), stopped, followers)), 60)
        except AssertionError:
            counts = served_by(upstream.calls(), stopped, followers)
            refused = [a.ask("outcomes")["outcomes"] for a in on_follower]
            raise AssertionError(
                f"served to the follower's agents while etcd is away {counts}; {refused}"
            ) from None
        during = not_fleet(upstream.calls(), stopped)
        first = min(c.start for c in during if c.agent in followers) - stopped
        per_agent = {n: sum(1 for c in during if c.agent == n) for n in leaders + followers}
        states = [a.ask("state") for a in on_follower]
        os.kill(etcd.pid, signal.SIGCONT)
        paused[0] = False
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 90)
        for proc in on_leader + on_follower:
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED", 60)  # type: ignore[misc]
    shown = (
        f"first call of a follower's agent other than a fleet probe {first:.2f} s after etcd "
        f"stopped; {len(during)} while it was away {per_agent}; the follower's agents then "
        f"{states}; most fleet probes at once {upstream.most('fleet')}"
    )
    print(shown)
    # the follower still held the stored HALF_OPEN: the leader closed it from memory
    assert [(s["state"], s["connected"]) for s in states] == [("HALF_OPEN", True)] * 2, shown
    # held as after a lost link, counted from no earlier than the pause (I3)
    assert first >= HOLD, shown
    assert upstream.most("fleet") <= BOUND, shown
