"""A follower keeps out the permits of an agent whose stream to it broke, until the agent is
back here and said which probes still run (server/relay_gone.py): given back at once, the
leader would grant them beside a probe still running (I3)."""

from __future__ import annotations

import time
from collections.abc import Callable

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import PROBE_TTL_SECS
from mission_control.server.hub import Hub
from mission_control.server.leadership import Leadership
from mission_control.server.outcome_ledger import BatchKey
from mission_control.server.relay import LeaderRelay


def relay_holding(agent: str, permits: int = 1, clock: Callable[[], float] = time.monotonic) -> LeaderRelay:
    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub(), clock=clock)
    relay._held_generation["svc"] = 4
    relay._held["svc"][agent] = permits
    return relay


def released(relay: LeaderRelay) -> int:
    return sum(s.probes_released for _, _, summaries in relay.drain() for s in summaries)


def test_a_probe_said_running_keeps_its_permit_until_its_result_passes_on() -> None:
    relay = relay_holding("a")
    relay.agent_left("a")  # its stream broke while its probe ran
    said = pb.OutcomeSummary(service="svc", probes_running=[17])
    relay.add_batch(BatchKey("a", "s", "x", 5), "a", [said])
    relay.holder_said("a")
    (sent,) = relay._outgoing()
    # not given back; the probe is not named to the leader (the permit is still this relay's)
    assert [list(s.probes_running) for s in sent.outcomes.summaries] == [[]]
    assert sum(s.probes_released for s in sent.outcomes.summaries) == 0
    result = pb.OutcomeSummary(service="svc", probe_successes=1, probe_generation=4, probe_grants=[17])
    relay.add_batch(BatchKey("a", "s", "x", 6), "a", [result])
    (sent,) = relay._outgoing()
    assert [s.probe_successes for s in sent.outcomes.summaries] == [1]  # under the relay's permit
    assert relay._held["svc"].get("a", 0) == 0


def test_a_result_sent_again_before_the_agent_said_passes_on() -> None:
    relay = relay_holding("a")
    relay.agent_left("a")
    result = pb.OutcomeSummary(service="svc", probe_failures=1, probe_generation=4, probe_grants=[17])
    relay.add("a", result)  # the probe ended while the link was down
    relay.holder_said("a")  # nothing runs any more: nothing left to give back
    summaries = [s for _, _, batch in relay.drain() for s in batch]
    assert [(s.probe_failures, s.probes_released) for s in summaries] == [(1, 0)]


def test_an_agent_that_does_not_come_back_gives_its_permit_back_after_a_probe_ttl() -> None:
    """It may have died with its stream: its permit goes on within one TTL, not at the
    end of its hold at the leader (the probe TTL plus the policy's timeout)."""
    now = [100.0]
    relay = relay_holding("a", clock=lambda: now[0])
    relay.agent_left("a")
    relay.holder_said("b")  # another agent's word frees nothing of a's
    relay.add("b", pb.OutcomeSummary(service="svc", probe_successes=1, probe_generation=4))
    assert relay._outgoing() == []  # b's claim is cut, and a's permit kept out
    now[0] += PROBE_TTL_SECS - 0.1
    assert relay._outgoing() == []
    now[0] += 0.1
    ((request,),) = [relay._outgoing()]
    assert request.outcomes.summaries[0].probes_released == 1
    relay.holder_said("a")  # too late: given back already
    assert relay._outgoing() == []


def test_a_later_half_open_drops_what_was_kept() -> None:
    relay = relay_holding("a")
    relay.agent_left("a")
    relay.hub.send_to_agent = lambda agent, message: False  # type: ignore[method-assign]
    relay._hand_out(pb.ProbeGrant(service="svc", permits=1, generation=6, series=9, number=3))
    relay.drain()  # the grant nobody here wanted went back
    relay.holder_said("a")
    assert released(relay) == 0  # the leader set the old ones aside with their HALF_OPEN


def test_a_permit_handed_out_a_probe_ttl_ago_is_given_back_once() -> None:
    """Given back when the TTL ended; not again when the agent says it runs nothing (a
    give-back, by count, of one the leader let lapse would free another agent's)."""
    now = [100.0]
    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub(), clock=lambda: now[0])
    relay.hub.send_to_agent = lambda agent, message: True  # type: ignore[method-assign]
    relay.ask_probe("a", "svc")
    relay._hand_out(pb.ProbeGrant(service="svc", permits=1, generation=4, series=9, number=3))
    relay.agent_left("a")
    now[0] += PROBE_TTL_SECS
    relay.holder_said("a")
    assert released(relay) == 0
    assert relay._gone.lapsed(now[0]) == {}
