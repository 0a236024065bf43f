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
