"""What a replica tells an agent asking for a probe permit depends on whether its view is
complete: before it has read the store it knows nothing of a breaker it lacks, and says
nothing (the agent keeps the state it holds); once read, CLOSED for a breaker it does not
hold (the control plane's own wiring, real etcd, no gRPC)."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.hub import Subscriber
from mission_control.server.store import EtcdStore


def pending(sub: Subscriber) -> list[pb.ConnectResponse]:
    out = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, pb.ConnectResponse):
            out.append(item)
    return out


async def test_a_replica_that_has_not_read_the_store_answers_no_probe_request(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    try:
        plane = ControlPlane(store, prefix=prefix, instance_id="me")  # not started: nothing read
        sub = plane.hub.connect(pb.AgentHello(agent_id="agent"))
        pending(sub)
        assert not plane.view_complete
        plane.request_probe("agent", "svc")
        plane.answer_probe("agent", "other")
        assert [m for m in pending(sub) if m.HasField("breaker")] == []  # the old code: CLOSED twice
        assert plane.snapshot().partial

        plane.sync.loaded.set()  # read once: its view is the store's
        plane.answer_probe("agent", "other")
        (answer,) = [m.breaker for m in pending(sub) if m.HasField("breaker")]
        assert answer.name == "other" and answer.state == pb.BREAKER_STATE_CLOSED
    finally:
        await store.close()
