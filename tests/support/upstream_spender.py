"""An agent process calling an Echo upstream under a fleet limit through the client
interceptor, at a steady rate, until told to stop: what the upstream receives is what the
fleet admitted.

    python -m tests.support.upstream_spender AGENT_ID CONTROL_PLANE[,...] UPSTREAM SERVICE RATE [CONFIG]

(CONFIG: a TOML file of the policies it enforces until the control plane's state arrives.)

Prints {"ready": bool} once connected and {"first": wall time} at its first call that went
through; ``stop`` answers {"admitted": [wall times of the calls that went through],
"refused": n} and exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.interceptors import client_interceptor

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


def main() -> None:
    agent_id, control_planes, upstream, service, rate = sys.argv[1:6]
    config = sys.argv[6] if len(sys.argv) > 6 else None
    mc = MissionControl(agent_id, control_plane=control_planes.split(","), config=config)
    mc.start()
    print(json.dumps({"ready": mc.wait_connected(60)}), flush=True)
    admitted: list[float] = []
    refused = [0]
    stop = threading.Event()

    def calling(stub: pb_grpc.EchoServiceStub) -> None:
        interval, due = 1.0 / float(rate), time.monotonic()
        while not stop.is_set():
            try:
                stub.Echo(pb.EchoRequest(text="x"), timeout=5)
                admitted.append(time.time())
                if len(admitted) == 1:
                    print(json.dumps({"first": admitted[0]}), flush=True)
            except (MissionControlError, grpc.RpcError):
                refused[0] += 1
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))

    with grpc.insecure_channel(upstream) as raw:
        stub = pb_grpc.EchoServiceStub(grpc.intercept_channel(raw, client_interceptor(mc, service=service)))
        caller = threading.Thread(target=calling, args=(stub,), daemon=True)
        caller.start()
        for line in sys.stdin:
            if line.split()[:1] == ["stop"]:
                break
        stop.set()
        caller.join(10)
    print(json.dumps({"admitted": admitted, "refused": refused[0]}), flush=True)
    mc.close()


if __name__ == "__main__":
    main()
