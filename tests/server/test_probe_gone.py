"""A permit that went with its holder's broken stream is not granted again beside the
probe the holder may still run (I3), nor kept past its hold (engine logic, injected clock).

Between a stream's end and the holder's first batch on its new stream (which names the
probes it still runs, ``OutcomeSummary.probes_running``) the permit counts; once that
batch said, the permits of probes not named are free at once, and an agent asking gets
one; the permit of a holder that never comes back goes on once the permit's hold (the
probe TTL it had to begin a probe in plus the policy's timeout) has passed: it may be cut
off, not dead, with its probe still running (a killed holder looks the same here). The
real-process cases are tests/server/test_probe_reset_gap.py and test_probe_cut_off.py."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers

from .test_probe_results import POLICY, half_open, result
from .test_recovery_check_rules import Clock

TTL = 5.0  # the probe TTL, from the grant


def running(*numbers: int) -> pb.OutcomeSummary:
    return pb.OutcomeSummary(service="llm", probes_running=list(numbers))


def asking(breakers: FleetBreakers, agent: str) -> bool:
    """``agent`` asks for a permit; whether it got one."""
    return breakers.request_probe(agent, "llm") is not None


def test_a_gone_permit_is_not_granted_before_its_holder_said() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    assert not asking(breakers, "b")  # the one permit is out: b asks on
    breakers.release_agent("a")  # a's stream broke while its probe ran
    # before: b, asking, got the permit at once, beside a's probe
    assert [agent for agent, _ in grants] == ["a"]
    clock.now += 0.1
    assert not asking(breakers, "b")
    breakers.record("a", running(grants[0][1]))  # a's first batch on its new stream
    breakers.holder_said("a")
    assert not asking(breakers, "b")  # counted in flight now, until its result
    breakers.record("a", result(grants[0][1]))
    assert [agent for agent, _ in grants] == ["a", "b"]  # b was asking: granted at once
    assert breakers.get("llm").half_open_successes == 0  # a's probe counts for nothing


def test_a_holder_back_that_runs_nothing_frees_its_permit_at_once() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    assert not asking(breakers, "b")
    breakers.release_agent("a")
    clock.now += 0.1
    breakers.holder_said("a")  # its first batch named no probe: the permit was unused
    assert [agent for agent, _ in grants] == ["a", "b"]


def test_a_result_sent_again_on_the_new_stream_frees_the_permit() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    assert not asking(breakers, "b")
    breakers.release_agent("a")
    breakers.record("a", result(grants[0][1]))  # the probe ended while the link was down
    assert breakers.get("llm").half_open_successes == 0
    assert [agent for agent, _ in grants] == ["a", "b"]


def test_a_holder_that_never_comes_back_holds_the_permit_until_its_hold_lapses() -> None:
    """Before, it went on once the TTL had passed, beside a probe begun in the TTL that a
    holder cut off from the control plane still ran (2 in flight against a bound of 1)."""
    clock = Clock()
    breakers, grants = half_open(clock)
    granted_at = clock.now
    clock.now += 1.0
    breakers.release_agent("a")  # cut off, or died with its stream: not heard either way
    clock.now = granted_at + TTL + 0.1
    breakers.tick()
    assert not asking(breakers, "b")  # its probe, begun in the TTL, may run the timeout
    clock.now = granted_at + TTL + POLICY.timeout_secs - 0.1
    breakers.tick()
    assert not asking(breakers, "b")
    clock.now = granted_at + TTL + POLICY.timeout_secs + 0.1
    breakers.tick()
    assert [agent for agent, _ in grants] == ["a", "b"]  # b was asking: granted at the tick


def test_a_gone_permit_counts_across_a_failed_probe_into_the_next_half_open() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breaker = breakers.get("llm")
    breaker.widen()  # two probes at once (a recovery check said the service serves)
    assert asking(breakers, "b")
    breakers.release_agent("a")
    breakers.record("b", result(grants[1][1], failed=True))
    assert breaker.state is BreakerState.OPEN
    clock.now += breaker.open_remaining(clock.now)
    breakers.tick()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.permits_out(clock.now) == 1  # a's probe may still run
    assert not asking(breakers, "c")  # one at a time: a's may run
    breakers.holder_said("a")
    assert grants[-1][0] == "c"  # c was asking: granted at once


def test_a_grant_that_reached_no_stream_goes_back_at_once() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breakers.record("a", result(grants[0][1]))  # a probe succeeded: two may run
    assert grants[-1][0] == "a"  # a asked: granted again at once
    assert asking(breakers, "b")
    breakers.undelivered("b", pb.ProbeGrant(service="llm", permits=1, number=grants[-1][1]))
    assert breakers.get("llm").permits_out(clock.now) == 1  # a's
    assert asking(breakers, "c")  # b never had it
    breakers.undelivered("b", pb.ProbeGrant(service="llm", permits=1, number=grants[-1][1]))
    assert breakers.get("llm").permits_out(clock.now) == 2  # not b's to give back


def test_only_the_holders_word_frees_its_gone_permit() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breakers.release_agent("a")
    breakers.holder_said("b")
    breakers.record("b", result(grants[0][1]))  # naming a's grant: b held none
    assert breakers.get("llm").permits_out(clock.now) == 1
    assert not asking(breakers, "b")


def test_a_holder_back_on_a_follower_has_its_probe_counted_by_the_relays_word() -> None:
    clock = Clock()
    breakers, grants = half_open(clock)
    breakers.release_agent("a")
    # a's first batch on a follower, passed on by its relay under a's name
    breakers.record("replica.r2", running(grants[0][1]), origin="a")
    clock.now += TTL + 0.1
    breakers.tick()
    assert not asking(breakers, "b")  # a's probe counts past the TTL
    assert breakers.get("llm").permits_out(clock.now) == 1
