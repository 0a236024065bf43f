"""A follower's relay ties its agents' probe results, give-backs and running probes to the
leader's grants (server/relay_permits.py), and the leader keeps a permit a relay names as
given back until its holder may say its probe still runs. The real-process case is
tests/server/test_probe_reconnect_follower.py."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import PROBE_TTL_SECS, FleetBreakers
from mission_control.server.hub import Hub
from mission_control.server.leadership import Leadership
from mission_control.server.relay import LeaderRelay

from .test_probe_results import POLICY, result
from .test_recovery_check_rules import Clock

RELAY = "replica.r2"


def relay_with(*agents: str) -> LeaderRelay:
    hub = Hub()
    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, hub, clock=Clock())
    for agent in agents:
        hub.connect(pb.AgentHello(agent_id=agent))
    return relay


def grant(number: int, generation: int = 3, series: int = 9) -> pb.ProbeGrant:
    return pb.ProbeGrant(service="llm", permits=1, generation=generation, number=number, series=series)


def hand(relay: LeaderRelay, agent: str, given: pb.ProbeGrant) -> None:
    relay.ask_probe(agent, given.service)
    relay._hand_out(given)


def sent(relay: LeaderRelay) -> list[pb.OutcomeSummary]:
    return [s for request in relay._outgoing() for s in request.outcomes.summaries]


def leave(relay: LeaderRelay, agent: str) -> None:
    for sub in [sub for sub in relay.hub.agents.values() if sub.agent_id == agent]:
        assert relay.hub.disconnect(sub)
    relay.agent_left(agent)


def test_an_earlier_probes_result_does_not_settle_the_new_permit_of_an_agent_behind_a_follower() -> None:
    relay = relay_with("a")
    hand(relay, "a", grant(1))
    leave(relay, "a")  # its stream broke while its probe under grant 1 ran
    assert sent(relay) == []  # kept out: the probe may still run (it does here)
    relay.hub.connect(pb.AgentHello(agent_id="a"))
    relay.holder_said("a")  # back, its first batch did not say the probe runs
    (released,) = sent(relay)
    assert list(released.released_grants) == [1]  # named: the leader lets go of that one
    hand(relay, "a", grant(2))  # back (not saying the probe runs), it got another
    relay.add("a", result(1))  # the earlier probe ended: named, the leader counts it for none
    (earlier,) = sent(relay)
    assert (earlier.probe_successes, list(earlier.probe_grants)) == (1, [1])
    # before: the result took the new permit by count, and the result under it was cut
    assert relay.permits.holds("a", "llm")
    relay.add("a", result(2))
    (own,) = sent(relay)
    assert (own.probe_successes, list(own.probe_grants)) == (1, [2])


def test_a_departed_agents_permit_is_kept_out_until_its_hold_lapses() -> None:
    """Its stream broke while it held a permit: the probe may run on (the agent cut off, or
    gone to another replica), so the permit stays out until the agent says, back here, what
    runs — or its hold lapses, the TTL and then the policy's timeout, the longest its probe
    may run (as the leader's own hold on it). Before, it was named back one probe TTL after
    it was handed out, and went to an agent asking then beside a probe still running."""
    relay = relay_with("a")
    clock = relay.permits._clock
    hand(relay, "a", grant(1))  # (the grant says no TTL: its hold is the policy timeout, 30 s)
    leave(relay, "a")
    clock.now += PROBE_TTL_SECS  # type: ignore[attr-defined]
    assert sent(relay) == [] and relay.permits.count("a", "llm") == 1
    clock.now += 30.0 - PROBE_TTL_SECS - 0.1  # type: ignore[attr-defined]
    assert sent(relay) == [] and relay.permits.count("a", "llm") == 1
    clock.now += 0.1  # type: ignore[attr-defined]
    assert sent(relay) == [] and relay.permits.count("a", "llm") == 0  # lapsed, as at the leader


def test_an_agent_back_after_a_probe_ttl_says_its_probe_runs() -> None:
    relay = relay_with("a")
    hand(relay, "a", grant(1))
    leave(relay, "a")
    relay.permits._clock.now += PROBE_TTL_SECS  # type: ignore[attr-defined]
    assert sent(relay) == []  # kept out: its probe may run
    relay.hub.connect(pb.AgentHello(agent_id="a"))
    # 7: not relayed here (a grant of the leader's own, before it moved here: checked there)
    relay.add_batch(None, "a", [pb.OutcomeSummary(service="llm", probes_running=[1, 7])])
    (running,) = sent(relay)
    assert list(running.probes_running) == [1, 7]  # said running: the leader counts it again
    relay._asked.clear()  # (sent up)
    relay.ask_probe("a", "llm")
    assert "llm" not in relay._asked  # it runs a probe: one at a time
    relay.add("a", result(1))
    (done,) = sent(relay)
    assert list(done.probe_grants) == [1]
    relay.ask_probe("a", "llm")
    assert "llm" in relay._asked


def test_a_running_probe_said_before_the_give_back_went_up_is_not_given_back() -> None:
    relay = relay_with("a")
    hand(relay, "a", grant(1))
    leave(relay, "a")
    relay.hub.connect(pb.AgentHello(agent_id="a"))
    relay.add_batch(None, "a", [pb.OutcomeSummary(service="llm", probes_running=[1])])
    (summary,) = sent(relay)
    assert list(summary.released_grants) == [] and list(summary.probes_running) == [1]


def test_results_named_under_another_agents_grant_are_cut() -> None:
    relay = relay_with("a", "b")
    hand(relay, "a", grant(1))
    hand(relay, "b", grant(2))
    relay.add("b", result(1))  # a's grant
    relay.add("b", pb.OutcomeSummary(service="llm", probes_running=[1]))
    assert not any(s.probe_successes or s.probe_grants or s.probes_running for s in sent(relay))
    assert relay.permits.holds("a", "llm") and relay.permits.holds("b", "llm")


def test_a_lower_generation_from_a_new_leader_is_the_one_in_force() -> None:
    """A leader after a wipe or a failover may grant a lower generation than the relay
    saw: its agents' results count (before: cut as of a HALF_OPEN that was over, so the
    follower's agents could never close the breaker), and a permit of the higher one
    left over does not keep its agent from asking."""
    relay = relay_with("a", "b")
    hand(relay, "a", grant(40, generation=7, series=1))
    hand(relay, "b", grant(3, generation=1, series=2))  # the new leader's
    relay.add("b", pb.OutcomeSummary(service="llm", probe_successes=1, probe_generation=1))
    (summary,) = sent(relay)
    assert summary.probe_successes == 1
    relay.ask_probe("a", "llm")
    assert "llm" in relay._asked  # its generation-7 permit is of no HALF_OPEN in force
    hand(relay, "a", grant(4, generation=1, series=2))
    relay.add("a", result(4))  # named
    (named,) = sent(relay)
    assert list(named.probe_grants) == [4]


def test_a_permit_lapses_on_the_relay_with_the_leaders_hold() -> None:
    relay = relay_with("a")
    clock = relay.permits._clock
    hand(relay, "a", grant(1))
    assert relay.permits.holds("a", "llm")
    clock.now += 30.0 + 1.0  # (the grant says no TTL: the policy timeout, 30 s here)
    assert not relay.permits.holds("a", "llm")


def engine(clock: Clock) -> FleetBreakers:
    breakers = FleetBreakers(lambda name: POLICY, clock=clock, wall=lambda: 1.7e9)
    breakers.record("x", pb.OutcomeSummary(service="llm", failures=1, trailing_failures=1))
    clock.now += 1.0
    breakers.tick()
    return breakers


def test_the_leader_keeps_a_permit_a_relay_names_as_given_back_until_it_is_said_running() -> None:
    clock = Clock()
    breakers = engine(clock)
    breaker = breakers.get("llm")
    first = breakers.request_probe(RELAY, "llm", relay=True)
    assert first is not None
    other = breakers.request_probe("y", "llm")
    assert other is None  # one at a time before a success
    breakers.record(RELAY, pb.OutcomeSummary(service="llm", released_grants=[first.number]))
    assert breaker.permits_of("y") == 1  # freed at once, as an agent's on the leader
    assert breaker.knows(RELAY, first.number) and breaker.permits_of(RELAY) == 0
    breakers.record(RELAY, pb.OutcomeSummary(service="llm", released_grants=[first.number + 10**6]))
    breakers.record(RELAY, pb.OutcomeSummary(service="llm", probes_running=[first.number]))
    assert breaker.earlier_of(RELAY) == 1  # its agent, back, runs its probe still: counted
    breakers.record(RELAY, result(first.number))
    assert breaker.half_open_successes == 0 and breaker.earlier_of(RELAY) == 0


def test_a_relays_permit_kept_from_a_closed_half_open_does_not_stop_its_other_agents() -> None:
    """A permit still out when the others closed the breaker is kept (its result comes
    later); a relay holding it still gets the permits left free for its other agents."""
    clock = Clock()
    breakers = engine(clock)
    breaker = breakers.get("llm")
    numbers: list[int] = []
    breakers.grant_listeners.append(lambda agent, grant: numbers.append(grant.number))
    assert breakers.request_probe(RELAY, "llm", relay=True) is not None
    breakers.record(RELAY, result(numbers[0]))  # one succeeded: two may be out now
    while breakers.request_probe(RELAY, "llm", relay=True) is not None:
        pass
    assert breaker.half_open_successes == 1 and len(numbers) == 3
    breakers.record(RELAY, result(numbers[1]))
    assert breaker.state is BreakerState.CLOSED and breaker.earlier_of(RELAY) == 1
    ended = breaker.generation
    breakers.record("x", pb.OutcomeSummary(service="llm", failures=1, trailing_failures=1))
    breakers.recover("llm", "check")  # a check's HALF_OPEN: success_threshold at once
    assert breaker.state is BreakerState.HALF_OPEN
    assert breakers.request_probe(RELAY, "llm", relay=True) is not None  # before: none
    assert breakers.request_probe(RELAY, "llm", relay=True) is None  # the kept one counts
    late = result(numbers[2])
    late.probe_generation = ended - 1
    breakers.record(RELAY, late)  # its late result: counted for none, the permit freed
    assert breaker.half_open_successes == 0 and breaker.earlier_of(RELAY) == 0
    assert breakers.request_probe(RELAY, "llm", relay=True) is not None


def test_what_an_agent_gone_for_good_held_is_forgotten_once_lapsed() -> None:
    relay = relay_with("a")
    hand(relay, "a", grant(1))
    leave(relay, "a")
    relay.permits._clock.now += 31.0  # type: ignore[attr-defined]
    sent(relay)
    assert relay.permits._held == {}


def test_a_result_under_the_leaders_own_grant_goes_on_from_a_follower() -> None:
    """An agent the leader granted a permit moved to this follower while its probe ran: the
    result names a grant relayed to no agent here, and goes on (the leader settles it under
    the agent); one naming another agent's relayed grant is still cut."""
    relay = relay_with("a", "b")
    hand(relay, "b", grant(2))
    relay.add("a", result(7))
    (passed,) = sent(relay)
    assert (passed.probe_successes, list(passed.probe_grants)) == (1, [7])
    relay.add("a", result(2))
    assert not any(s.probe_successes or s.probe_grants for s in sent(relay))
    assert relay.permits.holds("b", "llm")


def test_the_leader_settles_its_own_grant_under_the_agent_a_relay_passes_its_result_for() -> None:
    """Before, the follower cut the result and the leader counted the permit until its hold
    lapsed (the TTL and the policy's timeout), long after the probe had ended."""
    clock = Clock()
    breakers = engine(clock)
    breaker = breakers.get("llm")
    first = breakers.request_probe("a", "llm")
    assert first is not None
    breakers.release_agent("a")  # its stream broke while its probe ran: it moved to r2
    breakers.record(RELAY, pb.OutcomeSummary(service="llm", probes_running=[first.number]), origin="a")
    assert breaker.earlier_of("a") == 1  # counted in flight (for no HALF_OPEN)
    assert breakers.request_probe("b", "llm") is None
    breakers.record(RELAY, result(first.number), origin="a")
    assert breaker.earlier_of("a") == 0 and breaker.half_open_successes == 0  # counts for none
    assert breaker.permits_of("b") == 1  # free once the probe ended: b, asking, got it
