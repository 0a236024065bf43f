"""Many idle agents in one process: each holds a Connect stream until stdin closes.

    python -m tests.support.many_agents CONTROL_PLANE COUNT PREFIX

Prints ``{"connected": N}`` once every stream has its snapshot.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc.aio
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc


async def hold(stub: pb_grpc.ControlPlaneServiceStub, agent_id: str, ready: asyncio.Queue[str]) -> None:
    done = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.ConnectRequest(
            hello=pb.AgentHello(agent_id=agent_id, session_id="s", services=["llm_provider"])
        )
        await done.wait()

    async for response in stub.Connect(requests()):
        if response.HasField("snapshot"):
            await ready.put(agent_id)


async def main() -> None:
    address, count, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.ControlPlaneServiceStub(channel)
    ready: asyncio.Queue[str] = asyncio.Queue()
    tasks = [asyncio.create_task(hold(stub, f"{prefix}-{i:04d}", ready)) for i in range(count)]
    for _ in range(count):
        await ready.get()
    print(json.dumps({"connected": count}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    for task in tasks:
        task.cancel()
    await channel.close()


if __name__ == "__main__":
    asyncio.run(main())
