"""Probe grants carry an identity (the granting process's series and a number), and a
follower hands a grant delivered twice (a duplicated message) on once: a second agent
holding it would be one probe more than the fleet allows."""

from __future__ import annotations

import asyncio

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.grant_numbers import GrantNumbers
from mission_control.server.hub import Hub, Subscriber
from mission_control.server.leadership import Leadership
from mission_control.server.relay import LeaderRelay


def pending(sub: Subscriber) -> list[pb.ConnectResponse]:
    out = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, pb.ConnectResponse):
            out.append(item)
    return out


def test_grants_are_numbered_under_the_process_series() -> None:
    numbers = GrantNumbers()
    start = numbers.made
    first, second = pb.ProbeGrant(service="s"), pb.ProbeGrant(service="s")
    numbers.stamp(first)
    numbers.stamp(second)
    assert (first.number, second.number) == (start + 1, start + 2)
    assert first.series == second.series == numbers.series
    assert numbers.series != 0 and GrantNumbers().series != numbers.series
    numbers.stamp(first)  # numbered already: kept
    assert first.number == start + 1 and numbers.made == start + 2
    # numbered from a random start: another process's numbers are not these
    assert GrantNumbers().made != start


async def test_a_follower_hands_a_grant_delivered_twice_on_once() -> None:
    hub = Hub()
    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1")  # type: ignore[arg-type]
    relay = LeaderRelay(leadership, hub)
    subs = {name: hub.connect(pb.AgentHello(agent_id=name)) for name in ("a1", "a2")}
    for sub in subs.values():
        pending(sub)
    relay.ask_probe("a1", "svc")
    relay.ask_probe("a2", "svc")
    grant = pb.ProbeGrant(service="svc", permits=1, generation=3, number=1, series=9)
    relay._hand_out(grant)
    relay._hand_out(grant)  # the same grant again
    got = {name: [m for m in pending(sub) if m.HasField("probe_grant")] for name, sub in subs.items()}
    assert (len(got["a1"]), len(got["a2"])) == (1, 0)  # the old code: one each
    relay._hand_out(pb.ProbeGrant(service="svc", permits=1, generation=3, number=2, series=9))
    assert len([m for m in pending(subs["a2"]) if m.HasField("probe_grant")]) == 1
    await asyncio.sleep(0)
