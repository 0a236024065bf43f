"""An operator's write waits for an etcd slower than the store's 2 s bound (a real etcd,
paused with SIGSTOP as a disk busy with another writer's fsyncs would hold it; a control
plane in this process)."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.app import start_control_plane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

#: Longer than the store's 2 s, well within the operator's bound (8 s).
PAUSE_SECS = 3.0


async def test_a_forced_state_is_stored_by_an_etcd_slower_than_two_seconds(
    etcd: EtcdProcess, prefix: str
) -> None:
    running = await start_control_plane(EtcdStore([etcd.endpoint]), "127.0.0.1:0", prefix=prefix)
    assert etcd.pid is not None
    try:
        await asyncio.wait_for(running.plane.sync.loaded.wait(), 30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            request = pb.SetBreakerStateRequest(
                name="vector_db", state=pb.BREAKER_STATE_FORCED_OPEN, reason="maintenance", create=True
            )
            os.kill(etcd.pid, signal.SIGSTOP)
            try:
                call = asyncio.ensure_future(stub.SetBreakerState(request, timeout=30))
                await asyncio.sleep(PAUSE_SECS)  # the pause itself: etcd answers nothing meanwhile
                assert not call.done()
            finally:
                os.kill(etcd.pid, signal.SIGCONT)
            answer = await call
            assert answer.breaker.state == pb.BREAKER_STATE_FORCED_OPEN and answer.breaker.revision > 0
            stored = await stub.GetBreaker(pb.GetBreakerRequest(name="vector_db"), timeout=10)
            assert stored.breaker.revision == answer.breaker.revision
    finally:
        await running.stop(grace=0.5)
