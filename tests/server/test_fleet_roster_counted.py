"""Which agents the leader counts, as a follower reads the fleet roster: those connected to
the leader, or to a follower whose relay the leader lists as linked to it; one connected to
a replica that is not linked (it reaches etcd, never the leader) is listed, not counted."""

from __future__ import annotations

import asyncio

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.fleet_roster import FleetRoster, decode_relays
from mission_control.server.hub import Hub
from mission_control.server.roster_publish import pack
from mission_control.server.store import EtcdStore

from tests.server.test_fleet_roster import crowd, publisher, store, until  # noqa: F401


def _hub(*agents: str, relays: tuple[str, ...] = ()) -> Hub:
    hub = Hub()
    for agent in agents:
        hub.connect(pb.AgentHello(agent_id=agent, session_id=f"s-{agent}"))
    for replica in relays:
        hub.connect(pb.AgentHello(agent_id=f"replica.{replica}", session_id="r")).replica = True
    return hub


async def test_only_agents_under_the_leader_or_a_follower_linked_to_it_are_counted(
    store: EtcdStore,  # noqa: F811
    prefix: str,
) -> None:
    hubs = {"lead": _hub("l", relays=("linked",)), "linked": _hub("k"), "cut": _hub("m"), "me": _hub("n")}
    roster = FleetRoster(store, prefix)
    following = asyncio.create_task(roster.run())
    try:
        for name, hub in hubs.items():
            await publisher(store, prefix, hub, name).publish()
        await until(lambda: len(roster.agents()) == 4)
        assert roster.counted_elsewhere("me", "lead") == {("l", "s-l"), ("k", "s-k")}
        assert ("m", "s-m") in roster.elsewhere("me")  # listed, not counted
        assert roster.counted_elsewhere("me", None) == set()  # no leader known: nobody counted
        assert roster.counted_elsewhere("me", "cut") == {("m", "s-m")}  # (what "cut" would count)

        # the leader's relay from "linked" ends: its agents are counted no more
        for sub in [s for s in hubs["lead"].agents.values() if s.replica]:
            hubs["lead"].disconnect(sub)
        await publisher(store, prefix, hubs["lead"], "lead").publish()
        await until(lambda: roster.counted_elsewhere("me", "lead") == {("l", "s-l")})
    finally:
        following.cancel()


def test_the_relays_are_listed_in_the_first_shard_only_and_bounded() -> None:
    values = pack("lead", crowd(600, "lead"), [f"r{i}" for i in range(100)])
    assert len(values) > 1
    assert len(decode_relays(values[0])) == 64
    assert decode_relays(values[1]) == frozenset()
    assert b"relays" not in pack("lead", crowd(1, "lead"))[0]  # none: the value as before
    assert decode_relays(b'{"relays": "r1"}') == frozenset()  # not a list: none
