"""A decided transition reaches the agents' streams before its etcd write is even started;
an OPEN whose write is fenced (another replica leads now) is taken back: the streams get
the stored state (real etcd; the control plane's own wiring, no gRPC)."""

from __future__ import annotations

import asyncio

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.hub import Subscriber
from mission_control.server.store import EtcdStore

from tests.server.test_writes import Fence


async def _next_breaker(sub: Subscriber) -> pb.Breaker:
    while True:
        message = await asyncio.wait_for(sub.next(), 15)
        assert isinstance(message, pb.ConnectResponse)
        if message.HasField("breaker"):
            return message.breaker


async def test_an_open_is_pushed_before_it_is_written_and_taken_back_when_fenced(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    plane = ControlPlane(store, prefix=prefix, instance_id="me")
    fence = Fence(f"{prefix}/leader", 12345)  # a fence that no longer holds
    plane.writer.fence = fence  # type: ignore[assignment]
    sub = plane.hub.connect(pb.AgentHello(agent_id="agent"))
    writing = None
    try:
        plane.breakers.force("svc", BreakerState.FORCED_OPEN, "decided here")
        pushed = await _next_breaker(sub)  # the writer has not run at all yet
        assert pushed.state == pb.BREAKER_STATE_FORCED_OPEN and plane.writer.is_pending("svc")
        assert await store.get(plane.breaker_key("svc")) is None

        writing = asyncio.create_task(plane.writer.run())
        for _ in range(1500):
            if fence.deposed:
                break
            await asyncio.sleep(0.01)
        assert fence.deposed == 1 and plane.writer.is_pending("svc")  # kept while nobody leads
        fence.leader_id = "other"  # another replica leads: the stored state (nothing) wins
        plane.writer.wake()
        retracted = await _next_breaker(sub)
        assert retracted.state == pb.BREAKER_STATE_CLOSED and not plane.writer.is_pending("svc")
        assert await store.get(plane.breaker_key("svc")) is None  # nothing was ever stored
    finally:
        if writing is not None:
            writing.cancel()
        await store.close()
