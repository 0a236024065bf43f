"""The agent of :mod:`tests.support.spool_agent` with an ``async def`` write through a
``grpc.aio`` stub: its spool is replayed by an asyncio task. Same commands, same output.

    python -m tests.support.spool_agent_aio SPOOL_DIR UPSTREAM [PARALLEL]
"""

from __future__ import annotations

import asyncio
import sys

import grpc.aio
from mission_control.client.agent import MissionControl
from mission_control.client.spool import current_write_id

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.spool_agent_common import arguments, command, ready, say, state, written


async def main() -> None:
    args = arguments()
    stub = pb_grpc.EchoServiceStub(grpc.aio.insecure_channel(args.upstream))
    mc = MissionControl("spool-agent").start()

    @mc.guard("storage_backend", spool=args.spool_dir, spool_replay_parallel=args.parallel)
    async def save(key: str) -> str:
        answer = await stub.Echo(pb.EchoRequest(text=f"{current_write_id()}"), timeout=5)
        return answer.text  # type: ignore[no-any-return]

    spool = save.spool  # type: ignore[attr-defined]
    ready(spool)
    while line := await asyncio.to_thread(sys.stdin.readline):
        name, count = command(line)
        if name == "write":
            for i in range(count):
                written(await save(f"key-{i}"))
            say({"done": True})
        elif name == "state":
            state(spool)
        elif name == "quit":
            break
    mc.close()


if __name__ == "__main__":
    asyncio.run(main())
