"""A HALF_OPEN breaker closes through fleet probes soon after the leader's wall clock is
stepped back 30 s (real processes; the leader's clock follows a file, see
tests.support.skewed_clock).

Before, the agent measured the leader's clock as the least (receipt - sent_at) over a 60-s
window: after the step every later sample was 30 s larger, so every grant was read as
ending 30 s early, arrived spent, and the breaker stayed HALF_OPEN until the samples from
before the step left the window (~60 s). Now the step is followed within seconds
(client/clock_offset.py).

A leader restarted on its address with its clock set back by less than it was down sends
no stamp earlier than one before it: the step never showed, and the agent, which kept its
samples per address, read every grant of the new process as ending the step early until the
old process's samples left the window. Now each stream is measured anew.

etcd; r1 (the leader, its clock stepped); agent A, 2 callers. One probe in flight at most
(success_threshold 1); the upstream fails until the breaker is OPEN, then answers in 1 s.
"""

from __future__ import annotations

import time

import pytest
from mission_control.client.clock_offset import WINDOW_SECS
from mission_control.resilience.v1 import policy_pb2

from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane

SERVICE = "stepped"
#: Sure to be before the window would have let the samples from before the step go (the
#: old code's first chance to close), with room for the breaker's own 3-s wait.
BOUND = WINDOW_SECS - 15.0
#: The restarted leader's clock is set back this much while it is down this long.
RESTART_STEP = 12.0
DOWN = 15.0


def _tripped(ep: str, prefix: str, spawned: list[Proc], clock, up: ProbeUpstream):  # type: ignore[no-untyped-def]
    """A leader on the wall clock ``clock`` names (shifted by the seconds it holds) and agent
    A probing through it; once ``SERVICE`` is OPEN in etcd: (the leader, its address, A)."""
    clock.write_text("0")
    pol = policy_pb2.ServicePolicy(
        service=SERVICE, failure_threshold=3, success_threshold=1, wait_duration_secs=3.0, timeout_secs=3.0
    )
    up.fail(True)
    r1, a1 = control_plane(ep, prefix, "--instance-id", "r1", skew=f"@{clock}")
    spawned.append(r1)
    put_policy(a1, pol)
    (agent,) = start_probers(spawned, ["A"], a1, up.address, SERVICE, 2)
    poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_OPEN", 60)
    return r1, a1, agent


def _closes_on_one_fleet_probe(
    ep: str, prefix: str, up: ProbeUpstream, agent, since: float, bound: float, what: str
) -> None:  # type: ignore[no-untyped-def]
    """``SERVICE`` closes in etcd within ``bound`` s of ``since``, on fleet probes never more
    than one at a time, one at least."""
    try:
        poll(lambda: stored(ep, prefix, SERVICE).get("state") == "BREAKER_STATE_CLOSED", bound)
    except AssertionError:
        calls = [(c.kind, round(c.start - since, 2), round(c.end - c.start, 2)) for c in up.calls()]
        print(f"\nnot closed; calls (kind, start, duration) {calls[-30:]}; {agent.ask('outcomes')}")
        raise
    closed = time.monotonic() - since
    poll(lambda: up.in_flight("fleet") == 0, 10)
    out = agent.ask("stop")
    fleet = [(round(c.start - since, 2), round(c.end - c.start, 2)) for c in up.calls() if c.kind == "fleet"]
    print(f"\nclosed {closed:.1f} s after the {what}; fleet probes {fleet}; {out}")
    assert fleet, "closed without a fleet probe"
    assert up.most("fleet") <= 1, f"I3 broken: fleet probes (start, duration) {fleet}"


@pytest.mark.timeout(150)
def test_half_open_closes_soon_after_the_leaders_clock_steps_back(
    etcd_server, prefix, spawned: list[Proc], tmp_path
) -> None:
    ep = etcd_server.endpoint
    clock = tmp_path / "leader.skew"
    with ProbeUpstream(1.0) as up:
        _, _, agent = _tripped(ep, prefix, spawned, clock, up)
        clock.write_text("-30")
        stepped = time.monotonic()
        up.fail(False)
        _closes_on_one_fleet_probe(ep, prefix, up, agent, stepped, BOUND, "step")


@pytest.mark.timeout(180)
def test_half_open_closes_soon_after_the_leader_restarts_with_its_clock_set_back(
    etcd_server, prefix, spawned: list[Proc], tmp_path
) -> None:
    ep = etcd_server.endpoint
    clock = tmp_path / "leader.skew"
    with ProbeUpstream(1.0) as up:
        r1, a1, agent = _tripped(ep, prefix, spawned, clock, up)
        r1.kill()
        clock.write_text(str(-RESTART_STEP))
        time.sleep(DOWN)  # down longer than the step: its first stamp is later than its last
        up.fail(False)
        again, _ = control_plane(ep, prefix, "--instance-id", "r1", "--listen", a1, skew=f"@{clock}")
        spawned.append(again)
        restarted = time.monotonic()
        # the old code's first chance: the old process's samples out of the window
        _closes_on_one_fleet_probe(ep, prefix, up, agent, restarted, WINDOW_SECS - DOWN - 15.0, "restart")
