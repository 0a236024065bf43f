"""A follower's relay keeps a bounded backlog while its link to the leader is down."""

from __future__ import annotations

from mission_control.server.hub import Hub
from mission_control.server.leadership import Leadership
from mission_control.server.relay import MAX_ASKED, LeaderRelay


def test_probe_requests_kept_for_an_absent_leader_are_bounded() -> None:
    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub())
    for i in range(20 * MAX_ASKED):  # many agents asking about many services, no link
        relay.ask_probe(f"agent-{i % 300}", f"service-{i}")
        relay.ask_probe(f"agent-{i % 300}", "steady")
    asked, waiting = relay.backlog
    assert asked <= MAX_ASKED and waiting <= MAX_ASKED
    assert "steady" in relay._asked  # asked again and again: kept


def test_a_replica_that_becomes_the_leader_takes_what_the_old_leader_never_acknowledged() -> None:
    from mission_control.resilience.v1 import control_plane_pb2 as pb
    from mission_control.server.outcome_ledger import BatchKey

    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub())
    first = BatchKey("agent-1", "s1", "x", 1)
    relay.add_batch(first, "agent-1", [pb.OutcomeSummary(service="svc", failures=3, trailing_failures=3)])
    (sent,) = relay._outgoing()  # sent to the old leader, which died before acknowledging it
    assert sent.outcomes.sequence and sent.outcomes.origin.sequence == 1
    relay.add_batch(
        BatchKey("agent-1", "s1", "x", 2), "agent-1", [pb.OutcomeSummary(service="svc", failures=2)]
    )
    drained = relay.drain()  # this replica leads now: nothing is relayed any more
    assert [(key, [s.failures for s in summaries]) for key, _, summaries in drained] == [
        (first, [3]),
        (BatchKey("agent-1", "s1", "x", 2), [2]),
    ]
    assert relay.drain() == []


def test_a_batch_sent_again_before_it_was_passed_on_is_kept_once() -> None:
    from mission_control.resilience.v1 import control_plane_pb2 as pb
    from mission_control.server.outcome_ledger import BatchKey

    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub())
    key = BatchKey("agent-1", "s1", "x", 7)
    for _ in range(2):
        relay.add_batch(key, "agent-1", [pb.OutcomeSummary(service="svc", failures=3)])
    assert [r.outcomes.origin.sequence for r in relay._outgoing()] == [7]


def test_probe_results_relayed_only_under_a_permit_relayed_to_that_agent() -> None:
    """An agent on a follower cannot close a HALF_OPEN breaker with another agent's permit:
    its probe results count only under permits the follower passed on to it."""
    from mission_control.resilience.v1 import control_plane_pb2 as pb

    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub())
    relay.permits.handed("good-1", pb.ProbeGrant(service="svc", permits=1, generation=4))  # the one permit
    relay.add("mallory", pb.OutcomeSummary(service="svc", probe_successes=3))
    relay.add("good-1", pb.OutcomeSummary(service="svc", probe_successes=2))
    ((_, _, (summary,)),) = relay.drain()
    assert summary.probe_successes == 1  # good-1's one permit; mallory's claims are dropped
    assert relay.permits.count("good-1", "svc") == 0


def test_a_departed_agents_permits_go_back_to_the_leader_once_it_said_what_runs() -> None:
    """An agent on a follower went away holding a permit: its probe may run on (a stream
    breaks while the process lives), so the follower keeps the permit out; back, its first
    batch says nothing runs, and the follower gives it back to the leader (which hands it
    to an agent asking now) instead of letting it lapse."""

    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, Hub())
    from mission_control.resilience.v1 import control_plane_pb2 as pb

    relay.permits.handed("gone", pb.ProbeGrant(service="svc", permits=1, generation=4, number=17))
    relay.agent_left("gone")
    assert relay._outgoing() == []  # kept out: its probe may still run
    relay.holder_said("gone")
    (request,) = relay._outgoing()
    (summary,) = request.outcomes.summaries  # named: the leader lets go of that very permit
    assert (summary.service, list(summary.released_grants), summary.probes_released) == ("svc", [17], 0)
    assert not relay.permits.holds("gone", "svc")
