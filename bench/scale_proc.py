"""Simulated agents for the scaling case: many raw Connect streams from one process.

    python -m bench.scale_proc CONTROL_PLANE STREAMS TAG SERVICE

Every stream says hello for SERVICE, asks for a share of its fleet limit, and records when
each breaker message for SERVICE and each lease arrives. Commands on stdin, one JSON line
back for each: ``report`` (what arrived so far), ``flood SECONDS`` (every stream sends
outcome batches as fast as it can), ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

#: Streams per HTTP/2 connection (a few connections, as a few hosts' agents would use).
STREAMS_PER_CHANNEL = 100


@dataclass
class Seen:
    connected: int = 0
    #: breaker changed_at (ns) -> receive times, one per stream
    pushes: dict[int, list[float]] = field(default_factory=dict)
    leases: int = 0
    batches: int = 0
    flood_until: float = 0.0
    flood: asyncio.Event = field(default_factory=asyncio.Event)
    #: streams that ended with an error, by status code
    errors: dict[str, int] = field(default_factory=dict)


def _outcomes(service: str) -> pb.ConnectRequest:
    summary = pb.OutcomeSummary(service=service + "_load", successes=9, failures=1)
    return pb.ConnectRequest(outcomes=pb.OutcomeBatch(summaries=[summary]))


async def _requests(agent_id: str, service: str, seen: Seen):  # type: ignore[no-untyped-def]
    yield pb.ConnectRequest(hello=pb.AgentHello(agent_id=agent_id, services=[service]))
    demand = pb.CapacityDemand(service=service, resource=f"{service}.requests", wanted=1.0)
    yield pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=[demand]))
    batch = _outcomes(service)
    while True:
        await seen.flood.wait()
        sent = 0
        while time.monotonic() < seen.flood_until:
            yield batch
            sent += 1
            if sent % 10 == 0:
                await asyncio.sleep(0)
        seen.batches += sent
        await asyncio.sleep(0.05)


async def _stream(stub: pb_grpc.ControlPlaneServiceStub, agent_id: str, service: str, seen: Seen) -> None:
    call = stub.Connect(_requests(agent_id, service, seen))
    try:
        await _read(call, service, seen)
    except grpc.aio.AioRpcError as err:
        seen.errors[err.code().name] = seen.errors.get(err.code().name, 0) + 1
        seen.errors.setdefault(f"{err.code().name}: {(err.details() or '')[:120]}", 0)


async def _read(call: grpc.aio.StreamStreamCall, service: str, seen: Seen) -> None:  # type: ignore[type-arg]
    first = True
    async for message in call:
        kind = message.WhichOneof("message")
        if kind == "snapshot" and first:
            seen.connected += 1
            first = False
        elif kind == "breaker" and message.breaker.name == service:
            at = message.breaker.changed_at.ToNanoseconds()
            seen.pushes.setdefault(at, []).append(time.time())
        elif kind == "lease":
            seen.leases += 1


async def _commands(seen: Seen) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            return
        if words[0] == "report":
            print(json.dumps({"connected": seen.connected, "leases": seen.leases, "pushes": seen.pushes}))
        elif words[0] == "flood":
            seconds = float(words[1])
            seen.batches, seen.flood_until = 0, time.monotonic() + seconds
            seen.flood.set()
            await asyncio.sleep(seconds + 0.2)
            seen.flood.clear()
            print(json.dumps({"batches": seen.batches}))
        sys.stdout.flush()


async def main() -> None:
    address, streams, tag, service = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    seen = Seen()
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, -(-streams // STREAMS_PER_CHANNEL)))]
    stubs = [pb_grpc.ControlPlaneServiceStub(c) for c in channels]
    tasks = [
        asyncio.create_task(_stream(stubs[i % len(stubs)], f"{tag}-{i}", service, seen))
        for i in range(streams)
    ]
    deadline = time.monotonic() + 120
    while seen.connected < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": seen.connected, "errors": seen.errors}), flush=True)
    await _commands(seen)
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()


if __name__ == "__main__":
    asyncio.run(main())
