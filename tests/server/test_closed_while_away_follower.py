"""Agents connected to a FOLLOWER replica are told a CLOSED the leader decided from memory
while etcd is away, with one push, with real processes: two control planes on a real etcd of
the test's own, two agent processes on each, a real upstream counting every call by kind.
The breaker goes OPEN (the upstream failing), the upstream serves again (each call taking a
second) and etcd stops answering (SIGSTOP) as soon as it holds the HALF_OPEN. The leader's
probes succeed and it closes the breaker in memory: its agents are told at once. The
follower, which learns states from etcd, still holds the HALF_OPEN; the leader pushed the
CLOSED on the follower's link, at a later generation, and the follower passes it on to its
agents (``server/leader_states.py``): they hold the fleet CLOSED and their calls reach the
upstream while etcd is still away. The policy's timeout is long (the lost-link hold, the
probe TTL plus the timeout, is 25 s, and every call counted here is served before it), so
going by their own breakers after that hold cannot pass for it. Before: the follower's
agents held the HALF_OPEN (marked ``no_grants``) for the whole outage, their first call
served 9.6–10.1 s after the pause with a 3 s timeout (the hold), and never before the hold.
etcd then answers again: everyone ends CLOSED, with no more than ``success_threshold`` fleet
probes at once throughout."""

from __future__ import annotations

import os
import signal
import time

import pytest
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc
from tests.support.replicas import start_replicas

from .test_no_grants_outage import BOUND, SERVICE, not_fleet, paused, served_by

__all__ = ["paused"]  # the fixture, shared
CALLS = 10  # served to each of the follower's agents while etcd is away
TIMEOUT = 20.0
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    failure_threshold=3,
    success_threshold=BOUND,
    wait_duration_secs=2.0,
    max_wait_duration_secs=2.0,
    timeout_secs=TIMEOUT,
)
#: How long an agent holds a HALF_OPEN it can get no permit for before its own breaker
#: decides: the probe TTL (5 s, the control plane's) plus the policy's timeout.
HOLD = 5.0 + TIMEOUT


def held(agent: Proc) -> tuple[str, bool]:
    """(the fleet state the agent holds, whether it is connected)."""
    state = agent.ask("state")
    return state["state"], state["connected"]


@pytest.mark.timeout(300)
def test_agents_of_a_follower_are_told_the_closed_the_leader_decided_from_memory(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], paused: list[bool]
) -> None:
    endpoint = etcd.endpoint
    assert etcd.pid is not None
    names = {r: [f"{r}-agent-0", f"{r}-agent-1"] for r in ("r1", "r2")}
    with ProbeUpstream(1.0) as upstream:
        upstream.fail(True)
        fleet = start_replicas(endpoint, prefix, spawned, ("r1", "r2"), POLICY)
        agents = {
            r: start_probers(spawned, names[r], fleet.addresses[r], upstream.address, SERVICE, 2)
            for r in names
        }
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", timeout=60)
        upstream.fail(False)
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_HALF_OPEN", 60)
        # r1 leads unless its lease lapsed under load: nobody takes over while etcd is away
        lead = fleet.leader()
        assert lead in names, lead
        follows = "r2" if lead == "r1" else "r1"
        leaders, followers = names[lead], names[follows]
        on_leader, on_follower = agents[lead], agents[follows]
        os.kill(etcd.pid, signal.SIGSTOP)  # before any probe (a second each) has ended
        paused[0] = True
        stopped = time.monotonic()
        for proc in on_leader:  # closed by the leader, from memory
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED", 30)  # type: ignore[misc]
        closed = time.monotonic() - stopped
        try:
            # the follower's agents hold the fleet CLOSED too, still connected to it, and
            # their calls are served, all well inside the hold (before: HALF_OPEN until
            # etcd came back)
            for proc in on_follower:  # (each knows its replica only)
                poll(lambda p=proc: held(p) == ("CLOSED", True), HOLD - 10)  # type: ignore[misc]
            poll(lambda: all(n >= CALLS for n in served_by(upstream.calls(), stopped, followers)), HOLD - 10)
            assert time.monotonic() - stopped < HOLD, "served only once the hold was over"
        except AssertionError:
            counts = served_by(upstream.calls(), stopped, followers)
            states = [a.ask("state") for a in on_follower]
            raise AssertionError(
                f"served to the follower's agents while etcd is away {counts}; they hold {states}"
            ) from None
        during = not_fleet(upstream.calls(), stopped)
        first = min(c.start for c in during if c.agent in followers) - stopped
        per_agent = {n: sum(1 for c in during if c.agent == n) for n in leaders + followers}
        os.kill(etcd.pid, signal.SIGCONT)
        paused[0] = False
        poll(lambda: stored(endpoint, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 120)
        for proc in on_leader + on_follower:
            poll(lambda p=proc: p.ask("state")["state"] == "CLOSED", 60)  # type: ignore[misc]
    shown = (
        f"the leader's agents held CLOSED {closed:.2f} s after etcd stopped; first call of a "
        f"follower's agent other than a fleet probe {first:.2f} s after; {len(during)} while "
        f"it was away {per_agent}; most fleet probes at once {upstream.most('fleet')}"
    )
    print(shown)
    assert upstream.most("fleet") <= BOUND, shown
