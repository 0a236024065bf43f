"""The agent of :mod:`tests.support.spool_agent` with an ``async def`` write through a
``grpc.aio`` stub: its spool is replayed by an asyncio task. Same commands, same output.

    python -m tests.support.spool_agent_aio SPOOL_DIR UPSTREAM [PARALLEL]
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc.aio
from mission_control.client.agent import MissionControl
from mission_control.client.spool import Spooled, current_write_id

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


async def main() -> None:
    spool_dir, upstream = sys.argv[1:3]
    parallel = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    stub = pb_grpc.EchoServiceStub(grpc.aio.insecure_channel(upstream))
    mc = MissionControl("spool-agent").start()

    @mc.guard("storage_backend", spool=spool_dir, spool_replay_parallel=parallel)
    async def save(key: str) -> str:
        answer = await stub.Echo(pb.EchoRequest(text=f"{current_write_id()}"), timeout=5)
        return answer.text  # type: ignore[no-any-return]

    spool = save.spool  # type: ignore[attr-defined]
    print(json.dumps({"ready": True, "pending": len(spool)}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        words = line.split()
        if not words:
            continue
        if words[0] == "write":
            for i in range(int(words[1])):
                result = await save(f"key-{i}")
                if isinstance(result, Spooled):
                    print(f"spooled {result.seq} {result.write_id}", flush=True)
                else:
                    print(f"made {result}", flush=True)
            print(json.dumps({"done": True}), flush=True)
        elif words[0] == "state":
            counts = {"pending": len(spool), "spooled": spool.spooled, "replayed": spool.replayed}
            print(json.dumps({**counts, "dropped": spool.dropped}), flush=True)
        elif words[0] == "quit":
            break
    mc.close()


if __name__ == "__main__":
    asyncio.run(main())
