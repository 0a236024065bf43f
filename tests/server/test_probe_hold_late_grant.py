"""I3 when a follower's relayed grant reaches its agent late (real processes).

etcd; r1 leads (its address advertised through proxy P1, so the follower r2's link to it
goes through P1); r2; agent A on r2 through proxy P2; B and C straight on r1. The policy
lets one probe in flight (success_threshold 1), times calls out after T; the upstream
answers after D (< T). From just before the HALF_OPEN, P1 stalls r1's answers to r2 for H1
seconds, then P2 stalls r2's answers to A for H2 more: each stall is shorter than the
keepalive that would drop the stream, so the permit r1 granted for A reaches A ~H1 + H2
after it was made. r1 holds that permit for the probe TTL plus T from the grant; B and C
ask r1 all along. Before, A counted the full TTL from the grant's arrival and probed at
~g + 7 while r1, its hold over at g + 5 + T, granted B or C beside it. Now the grant says
when its hold ends (``ProbeGrant.hold_until``): r2 passes on only the TTL left, A gives
back a permit with too little hold left, and any probe under it ends by the hold. With the
clocks apart (r1 10 s behind, r2 6 s ahead, A 3 s behind, B and C 4 s ahead) the same holds:
each reads the hold through its sender's clock offset, which the stalled messages do not
raise (the least delay over recent messages counts).
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
T, D = 3.0, 2.9
H1 = H2 = 3.5


def _until(t: float) -> None:
    while time.monotonic() < t:
        time.sleep(0.02)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "clocks",
    [(0.0, 0.0, 0.0, 0.0), (-10.0, 6.0, -3.0, 4.0)],
    ids=["clocks-agree", "clocks-apart"],
)
def test_a_late_relayed_grant_runs_no_probe_past_its_hold(
    etcd_server, prefix, spawned: list[Proc], clocks: tuple[float, float, float, float]
) -> None:
    """``clocks``: how far the wall clocks of r1, r2, A and of B and C are off (each reads
    the hold through its sender's clock offset, measured from the messages it sends)."""
    s1, s2, sa, sbc = clocks
    ep = etcd_server.endpoint
    pol = policy_pb2.ServicePolicy(
        service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=3.0, timeout_secs=T
    )
    with proxy_in_thread() as (p1, loop1), proxy_in_thread() as (p2, loop2), ProbeUpstream(D) as up:
        up.fail(True)
        r1, a1 = control_plane(ep, prefix, "--instance-id", "r1", "--advertise", p1.address, skew=s1)
        spawned.append(r1)
        p1.target = a1
        poll(lambda: leader_of(ep, prefix) == "r1")
        r2, a2 = control_plane(ep, prefix, "--instance-id", "r2", skew=s2)
        spawned.append(r2)
        p2.target = a2
        put_policy(a1, pol)
        agents = start_probers(spawned, ["A"], p2.address, up.address, SERVICE, 2, skew=sa)
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", 60)
        up.fail(False)
        time.sleep(2.7)  # the HALF_OPEN comes 3 s after the OPEN: stall r1 -> r2 just before
        loop1.call_soon_threadsafe(p1.hold_answers)
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_HALF_OPEN", 30)
        g = time.monotonic()
        agents += start_probers(spawned, ["B", "C"], a1, up.address, SERVICE, 2, skew=sbc)
        _until(g + H1 - 0.3)
        loop2.call_soon_threadsafe(p2.hold_answers)
        _until(g + H1)
        loop1.call_soon_threadsafe(p1.release_answers)
        _until(g + H1 + H2)
        loop2.call_soon_threadsafe(p2.release_answers)
        # a probe that succeeds closes the breaker (threshold 1): no fleet probe after that
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", 40)
        poll(lambda: up.in_flight("fleet") == 0, 10)
        for a in agents:
            a.send("stop")
        calls = sorted(
            (c.agent, round(c.start - g, 2), round(c.end - g, 2)) for c in up.calls() if c.kind == "fleet"
        )
        assert calls, "no fleet probe ran"
        print(f"fleet probes (agent, start, end) from the HALF_OPEN: {calls}")
        assert up.most("fleet") <= 1, (
            f"I3 broken: fleet probes (agent, start, end) from the HALF_OPEN: {calls}"
        )
