"""An agent whose writes to an upstream go through a spool, in its own process.

    python -m tests.support.spool_agent SPOOL_DIR UPSTREAM [PARALLEL]

Prints ``{"ready": true, "pending": N}``, then reads commands: ``write N`` makes N writes
one after another and prints a line per write (``made ID`` or ``spooled SEQ ID``) as soon as it
returns, then ``{"done": true}``; ``state`` prints the spool's counts; ``quit``.
A write sends ``<write id>`` as the Echo text, so the upstream can count each write.
"""

from __future__ import annotations

import sys

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.spool import current_write_id

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.spool_agent_common import arguments, command, ready, say, state, written


def main() -> None:
    args = arguments()
    stub = pb_grpc.EchoServiceStub(grpc.insecure_channel(args.upstream))
    mc = MissionControl("spool-agent").start()

    @mc.guard("storage_backend", spool=args.spool_dir, spool_replay_parallel=args.parallel)
    def save(key: str) -> str:
        return stub.Echo(pb.EchoRequest(text=f"{current_write_id()}"), timeout=5).text  # type: ignore[no-any-return]

    spool = save.spool  # type: ignore[attr-defined]
    ready(spool)
    for line in sys.stdin:
        name, count = command(line)
        if name == "write":
            for i in range(count):
                written(save(f"key-{i}"))
            say({"done": True})
        elif name == "state":
            state(spool)
        elif name == "quit":
            break
    mc.close()


if __name__ == "__main__":
    main()
