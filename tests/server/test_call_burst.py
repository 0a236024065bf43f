"""A burst of new calls while the control plane's event loop is busy is queued, not refused.

grpc keeps calls the server has not taken yet in a queue and, by default, refuses new ones
at random once 1,000 wait (every one past 3,000): 3,000 agents connecting at once lost
~400 streams that way. The control plane queues a whole fleet's worth instead."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.server.app import RunningControlPlane, server_options
from mission_control.server.service import Limits

BURST = 2_500


def _burst(port: int, sent: threading.Event, codes: list[grpc.StatusCode]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        futures = [check.future(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(BURST)]
        sent.set()
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())


async def test_a_burst_of_calls_while_the_loop_is_held_is_served(control_plane: RunningControlPlane) -> None:
    sent, codes = threading.Event(), list[grpc.StatusCode]()
    client = threading.Thread(target=_burst, args=(control_plane.port, sent, codes), daemon=True)
    client.start()
    # The loop is held (as a long lease round or a GC pause holds it) while every call
    # arrives, so that they all wait in grpc's queue at once.
    assert sent.wait(60)
    time.sleep(1.0)
    await asyncio.to_thread(client.join, 150)
    assert not client.is_alive()
    refused = {code.name: codes.count(code) for code in set(codes) if code != grpc.StatusCode.OK}
    assert len(codes) == BURST and not refused, refused


def test_a_call_may_wait_for_the_loop_longer_than_grpcs_default() -> None:
    # grpc cancels a call not taken within 30 s by default; holding a loop that long
    # is too slow for a test (bench.scale at 10,000 agents shows it), so the setting is
    # checked here.
    options = dict(server_options(Limits()))
    assert options["grpc.server_max_unrequested_time_in_server"] > 30
