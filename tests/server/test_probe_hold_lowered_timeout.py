"""I3 when the policy's timeout is lowered while a follower cannot hear etcd (real processes).

etcd; r1 leads; r2 follows, on etcd through proxy E. Agent A on r2; B and C on r1 from the
HALF_OPEN on. The policy lets one probe in flight (success_threshold 1) with timeout
T_OLD; the upstream answers after D (T_NEW + probe TTL < D < T_OLD). Once the breaker is
OPEN, E is paused (etcd is away for r2 alone) and the operator lowers the timeout to T_NEW
on r1. r1 grants r2's relay (for A) a permit held for the probe TTL plus T_NEW; A, told
T_OLD by r2, which cannot read the change, probed for up to T_OLD before, and r1 granted B
or C beside it once its hold was over. Now the grant carries the end of r1's hold
(``ProbeGrant.hold_until``): A's probe ends by it, or A gives the permit back unused.
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
from tests.support.tcp_pause import proxy_in_thread

SERVICE = "probed"
T_OLD, T_NEW, D = 10.0, 1.0, 8.0


def _policy(timeout: float) -> policy_pb2.ServicePolicy:
    return policy_pb2.ServicePolicy(
        service=SERVICE,
        failure_threshold=3,
        success_threshold=1,
        wait_duration_secs=4.0,
        timeout_secs=timeout,
    )


@pytest.mark.timeout(120)
def test_a_probe_ends_by_the_granters_hold_after_the_timeout_was_lowered(
    etcd_server, prefix, spawned: list[Proc]
) -> None:
    ep = etcd_server.endpoint
    with proxy_in_thread() as (e, loop), ProbeUpstream(D) as up:
        e.target = ep
        up.fail(True)
        r1, a1 = control_plane(ep, prefix, "--instance-id", "r1")
        spawned.append(r1)
        poll(lambda: leader_of(ep, prefix) == "r1")
        r2, a2 = control_plane(e.address, prefix, "--instance-id", "r2")
        spawned.append(r2)
        put_policy(a1, _policy(T_OLD))
        agents = start_probers(spawned, ["A"], a2, up.address, SERVICE, 2)
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", 60)
        up.fail(False)
        loop.call_soon_threadsafe(e.pause)
        put_policy(a1, _policy(T_NEW))
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_HALF_OPEN", 30)
        g = time.monotonic()
        agents += start_probers(spawned, ["B", "C"], a1, up.address, SERVICE, 2)
        # B or C probes once r1's hold on the relay's permit is over (or A gave it back)
        poll(lambda: any(c.agent in ("B", "C") for c in up.calls() if c.kind == "fleet"), 40)
        poll(lambda: up.in_flight("fleet") == 0, 15)
        loop.call_soon_threadsafe(e.resume)
        for a in agents:
            a.send("stop")
        calls = sorted(
            (c.agent, round(c.start - g, 2), round(c.end - g, 2)) for c in up.calls() if c.kind == "fleet"
        )
        print(f"fleet probes (agent, start, end) from the HALF_OPEN: {calls}")
        assert up.most("fleet") <= 1, (
            f"I3 broken: fleet probes (agent, start, end) from the HALF_OPEN: {calls}"
        )
