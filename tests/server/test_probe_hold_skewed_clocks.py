"""HALF_OPEN breakers close when the wall clocks of replicas and agents disagree by seconds
(real processes; each process's wall clock shifted by tests.support.skewed_clock).

A grant's hold end (``ProbeGrant.hold_until``) is the granter's wall clock. Before, an agent
read it on its own wall clock: a leader 10 s behind (or an agent 10 s ahead) made every
grant arrive spent, so no fleet probe ran and the breaker stayed HALF_OPEN; a leader 5 s
behind cut every probe of a 2.9 s upstream at ~2.5 s, and the breaker went on cycling. Now
each process measures its sender's clock from the messages it sends
(``ConnectResponse.sent_at``): the agent reads the hold on its own clock, a follower
relaying a grant reads it on its own clock first.

etcd; r1 (the leader, its clock LEADER off); in the relayed case r2 (a follower, its clock
FOLLOWER off) between r1 and the agent; agent A (its clock AGENT off), 2 callers. The policy
lets one probe in flight (success_threshold 1); the upstream fails until the breaker is
OPEN, then answers after D seconds (< the policy's timeout T).
"""

from __future__ import annotations

import time

import pytest
from mission_control.resilience.v1 import policy_pb2

from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane

SERVICE = "skewed"
T = 3.0

CASES = {
    # name: (leader's clock, follower's clock (None: no follower), agent's clock, D)
    "leader-10s-behind": (-10.0, None, 0.0, 1.0),
    "agent-10s-ahead": (0.0, None, 10.0, 1.0),
    "leader-5s-behind-slow-upstream": (-5.0, None, 0.0, 2.9),
    "follower-between": (-10.0, 6.0, -3.0, 1.0),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("case", list(CASES))
def test_half_open_closes_whatever_the_clocks(etcd_server, prefix, spawned: list[Proc], case: str) -> None:
    leader, follower, agent, d = CASES[case]
    ep = etcd_server.endpoint
    pol = policy_pb2.ServicePolicy(
        service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=3.0, timeout_secs=T
    )
    with ProbeUpstream(d) as up:
        up.fail(True)
        r1, a1 = control_plane(ep, prefix, "--instance-id", "r1", skew=leader)
        spawned.append(r1)
        target = a1
        if follower is not None:
            poll(lambda: leader_of(ep, prefix) == "r1")
            r2, target = control_plane(ep, prefix, "--instance-id", "r2", skew=follower)
            spawned.append(r2)
        put_policy(a1, pol)
        agents = start_probers(spawned, ["A"], target, up.address, SERVICE, 2, skew=agent)
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", 60)
        up.fail(False)
        t0 = time.monotonic()
        # before: HALF_OPEN for good (no probe, or every probe cut short); one probe closes it
        try:
            poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 45)
        except AssertionError:
            calls = [(c.kind, round(c.start - t0, 2), round(c.end - c.start, 2)) for c in up.calls()]
            said = agents[0].ask("outcomes")
            print(f"\n{case}: not closed; calls (kind, start, duration) {calls[-30:]}; {said}")
            raise
        closed = time.monotonic() - t0
        poll(lambda: up.in_flight("fleet") == 0, 10)
        out = agents[0].ask("stop")
        fleet = [(round(c.start - t0, 2), round(c.end - c.start, 2)) for c in up.calls() if c.kind == "fleet"]
        print(f"\n{case}: closed {closed:.1f} s after the upstream recovered; fleet probes {fleet}; {out}")
        assert fleet, "closed without a fleet probe"
        assert up.most("fleet") <= 1, f"I3 broken: fleet probes (start, duration) {fleet}"
