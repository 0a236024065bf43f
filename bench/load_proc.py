"""Simulated agents for the capacity case: raw Connect streams, in one process.

    python -m bench.load_proc CONTROL_PLANE STREAMS SECONDS MODE

MODE "flood": every stream sends outcome batches as fast as it can for SECONDS.
MODE "idle": streams connect, receive their snapshot, then hold still for SECONDS.
Prints {"batches": n, "connected": m}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

BATCH = pb.ConnectRequest(
    outcomes=pb.OutcomeBatch(
        summaries=[pb.OutcomeSummary(service="load", successes=9, failures=1, trailing_failures=0)]
    )
)


async def stream(stub, index: int, seconds: float, mode: str, counts: dict) -> None:  # type: ignore[no-untyped-def]
    sent = 0
    connected = asyncio.Event()
    done = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        nonlocal sent
        yield pb.ConnectRequest(hello=pb.AgentHello(agent_id=f"load-{index}-{time.time_ns()}"))
        await connected.wait()
        if mode == "idle":
            await asyncio.sleep(seconds)
        else:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                yield BATCH
                sent += 1
                if sent % 20 == 0:
                    await asyncio.sleep(0)
        done.set()
        await asyncio.sleep(3600)

    call = stub.Connect(requests())
    first = await call.read()
    if first is not grpc.aio.EOF and first.HasField("snapshot"):
        counts["connected"] += 1
    connected.set()
    await done.wait()
    counts["batches"] += sent
    call.cancel()


async def main() -> None:
    address, streams, seconds, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    counts = {"batches": 0, "connected": 0}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        tasks = [asyncio.create_task(stream(stub, i, seconds, mode, counts)) for i in range(streams)]
        if mode == "idle":
            deadline = time.monotonic() + 60
            while counts["connected"] < streams and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            print(json.dumps({"connected": counts["connected"]}), flush=True)
        await asyncio.wait(tasks, timeout=seconds + 60)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
