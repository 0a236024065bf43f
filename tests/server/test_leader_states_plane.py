"""A follower's agents are told the leader's newer breaker state through the control plane's
own wiring (``server/leader_states.py``; real etcd for the store, nothing started, no gRPC:
the link's messages handed to the relay's receiver as ``server/relay.py`` does): at once on
the push, in a new agent's snapshot and in the answer to a probe request; a state the
follower reads from etcd meanwhile that is older does not take them back; its own, once
caught up, is told; and a deposed leader's word goes with its link once etcd answers."""

from __future__ import annotations

import time

from google.protobuf import json_format
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from .test_probe_answer_view import pending

NAME = "svc"


def record(state: int, generation: int) -> bytes:
    message = pb.Breaker(name=NAME, state=state, generation=generation)
    message.changed_at.FromNanoseconds(int((time.time() - 1) * 1e9))
    return json_format.MessageToJson(message).encode()


def told(sub) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(state, generation) of every breaker pushed to ``sub`` since last asked (the same
    state may be pushed twice: the link's mark of it may change with it)."""
    return {(m.breaker.state, m.breaker.generation) for m in pending(sub) if m.HasField("breaker")}


async def test_a_followers_agents_are_told_the_leaders_newer_state_and_not_taken_back(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    closed, half_open, opened = pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_HALF_OPEN, pb.BREAKER_STATE_OPEN
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        plane = ControlPlane(store, prefix=prefix, instance_id="follower")
        plane.enable_leadership("127.0.0.1:1")  # not started: it follows
        plane.sync.loaded.set()
        relay = plane.relay
        assert relay is not None and not plane.leading
        plane.breakers.adopt(NAME, record(opened, 3), 9)  # what etcd said last
        sub = plane.hub.connect(pb.AgentHello(agent_id="agent"))
        relay.marks.snapshot([plane.breakers.to_proto(NAME)])  # the link is up, agreeing
        assert told(sub) == set()

        # the leader moved on from memory: HALF_OPEN stored at revision 10, then CLOSED
        relay.marks.pushed(pb.Breaker(name=NAME, state=closed, generation=5, revision=10))
        assert told(sub) == {(closed, 5)}  # at once
        assert [(b.state, b.generation) for b in plane.snapshot().breakers] == [(closed, 5)]
        plane.answer_probe("agent", NAME)
        assert told(sub) == {(closed, 5)}

        plane.breakers.adopt(NAME, record(half_open, 4), 10)  # the follower's watch, late
        assert told(sub) == {(closed, 5)}  # not taken back to the HALF_OPEN
        plane.breakers.adopt(NAME, record(closed, 5), 11)  # the leader's write comes back
        assert told(sub) == {(closed, 5)}
        assert plane.leader_states is not None and len(plane.leader_states) == 0

        # a leader that then decides from memory and loses its link, etcd answering: its
        # word goes (the follower's own view, which follows etcd, is in force again)
        relay.marks.pushed(pb.Breaker(name=NAME, state=opened, generation=6, revision=11))
        assert told(sub) == {(opened, 6)}
        relay.marks.link_down()
        assert told(sub) == {(closed, 5)}
    finally:
        await store.close()
