"""An agent whose writes to an upstream go through a spool, in its own process.

    python -m tests.support.spool_agent SPOOL_DIR UPSTREAM [PARALLEL]

Prints ``{"ready": true, "pending": N}``, then reads commands: ``write N`` makes N writes
one after another and prints a line per write (``made ID`` or ``spooled SEQ ID``) as soon as it
returns, then ``{"done": true}``; ``state`` prints the spool's counts; ``quit``.
A write sends ``<write id>`` as the Echo text, so the upstream can count each write.
"""

from __future__ import annotations

import json
import sys

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.spool import Spooled, current_write_id

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


def main() -> None:
    spool_dir, upstream = sys.argv[1:3]
    parallel = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    stub = pb_grpc.EchoServiceStub(grpc.insecure_channel(upstream))
    mc = MissionControl("spool-agent").start()

    @mc.guard("storage_backend", spool=spool_dir, spool_replay_parallel=parallel)
    def save(key: str) -> str:
        return stub.Echo(pb.EchoRequest(text=f"{current_write_id()}"), timeout=5).text  # type: ignore[no-any-return]

    spool = save.spool  # type: ignore[attr-defined]
    print(json.dumps({"ready": True, "pending": len(spool)}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "write":
            for i in range(int(words[1])):
                result = save(f"key-{i}")
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
    main()
