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
