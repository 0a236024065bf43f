"""A stream that stops reading is ended, never waited for; the others keep receiving."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import QUEUE_LIMIT, Hub
from mission_control.server.inbound import agent_key, hello_problem


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


async def test_two_processes_with_one_agent_id_are_two_agents_and_shown() -> None:
    hub = Hub()
    hellos = [pb.AgentHello(agent_id="a", instance=i) for i in ("p1", "p2")]
    first, twin = (hub.connect(h, "10.0.0.1", agent_key(h)) for h in hellos)
    again = hub.connect(hellos[0], "10.0.0.1", agent_key(hellos[0]))  # p1 reconnecting
    assert (first.agent_id, twin.agent_id, first.name) == ("a@p1", "a@p2", "a")
    assert hub.connected_agents == 2 and hub.streams_named("a") == 3 and hub.streams_of("a@p1") == 2
    assert hub.processes_named("a") == {"a@p1", "a@p2"} and hub.shared_names() == ["a"]
    assert not hub.disconnect(first) and hub.disconnect(twin)
    assert hub.shared_names() == [] and hub.processes_named("a") == {"a@p1"}
    assert hub.disconnect(again) and hub.streams_named("a") == 0 and hub.connected_agents == 0


def test_an_instance_is_checked_and_keys_cannot_collide() -> None:
    assert hello_problem(pb.AgentHello(agent_id="a", instance="x" * 65))[0] == "hello.instance"  # type: ignore[index]
    assert hello_problem(pb.AgentHello(agent_id="a", instance="a@b"))[0] == "hello.instance"  # type: ignore[index]
    assert hello_problem(pb.AgentHello(agent_id="a@b")) is not None  # '@' is in no agent id
    assert hello_problem(pb.AgentHello(agent_id="a", instance="5f0c-9_A")) is None
    assert agent_key(pb.AgentHello(agent_id="a")) == "a"  # an older agent: keyed as before
