"""A stream that stops reading is ended, never waited for; the others keep receiving."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import QUEUE_LIMIT, Hub


async def test_a_wedged_stream_is_ended_and_others_are_not_held_up() -> None:
    hub = Hub()
    wedged = hub.connect(pb.AgentHello(agent_id="wedged"))
    healthy = hub.connect(pb.AgentHello(agent_id="healthy"))
    received = 0
    for i in range(QUEUE_LIMIT + 100):
        hub.broadcast(pb.ConnectResponse(breaker=pb.Breaker(name=f"b{i}")))  # never blocks
        message = await healthy.next()  # the healthy agent reads as it goes
        assert message is not None
        received += 1
    assert received == QUEUE_LIMIT + 100
    assert wedged.overflowed and not healthy.overflowed
    # the wedged stream drains what it had, then ends (and the servicer aborts it)
    drained = 0
    while await wedged.next() is not None:
        drained += 1
    assert drained <= QUEUE_LIMIT


async def test_streams_are_found_by_agent_and_by_address() -> None:
    hub = Hub()
    first = hub.connect(pb.AgentHello(agent_id="a"), "10.0.0.1")
    second = hub.connect(pb.AgentHello(agent_id="a"), "10.0.0.1")
    other = hub.connect(pb.AgentHello(agent_id="b"), "10.0.0.2")
    assert hub.connected_agents == 2 and hub.streams_of("a") == 2 and hub.streams_of("zz") == 0
    assert hub.agents_from("10.0.0.1") == 1 and hub.has_agent_from("10.0.0.1", "a")
    assert not hub.has_agent_from("10.0.0.1", "b") and hub.agent_ids_from("10.0.0.2") == {"b"}
    lease = pb.ConnectResponse(lease=pb.CapacityLease(service="s"))
    assert hub.send_to_agent("a", lease) and not hub.send_to_agent("zz", lease)
    assert await first.next() is lease and second.queue.empty() and other.queue.empty()
    first.overflowed = True  # a stream that no longer takes messages: the next one does
    assert hub.send_to_agent("a", lease) and await second.next() is lease
    assert not hub.disconnect(first)  # "a" still has a stream
    assert not hub.disconnect(first)  # twice changes nothing
    assert hub.disconnect(second) and hub.streams_of("a") == 0 and hub.agents_from("10.0.0.1") == 0
    assert not hub.send_to_agent("a", lease) and hub.connected_agents == 1
    assert hub.disconnect(other) and hub.connected_agents == 0 and not hub.agent_ids_from("10.0.0.2")
