"""An agent calling an Echo upstream at a steady rate through the client interceptor, with
the default retry budget (``max_retries = 3``, a breaker that never opens), to count the
attempts a failing upstream gets per call.

    python -m tests.support.paced_agent UPSTREAM RATE

Prints {"ready": true}; then ``run SECONDS`` makes RATE calls a second (each on its time,
not after the last one) and answers {"calls": n, "failed": k}; ``quit`` ends it.
"""

from __future__ import annotations

import json
import sys
import time

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError
from mission_control.client.policy import ServicePolicy
from mission_control.interceptors import client_interceptor

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc

SERVICE = "paced"
POLICY = ServicePolicy(service=SERVICE, max_retries=3, failure_threshold=10**6, rate_limit_requests=10**9)


def paced(stub: pb_grpc.EchoServiceStub, seconds: float, rate: float) -> dict[str, int]:
    calls = failed = 0
    start = time.monotonic()
    while (due := start + calls / rate) < start + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        calls += 1
        try:
            stub.Echo(pb.EchoRequest(text="x"), timeout=5)
        except (MissionControlError, grpc.RpcError):
            failed += 1
    return {"calls": calls, "failed": failed}


def main() -> None:
    upstream, rate = sys.argv[1], float(sys.argv[2])
    mc = MissionControl("paced-agent", config={SERVICE: POLICY})
    with grpc.insecure_channel(upstream) as raw:
        stub = pb_grpc.EchoServiceStub(grpc.intercept_channel(raw, client_interceptor(mc, service=SERVICE)))
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["run"]:
                print(json.dumps(paced(stub, float(words[1]), rate)), flush=True)
            elif words[:1] == ["quit"]:
                break
    mc.close()


if __name__ == "__main__":
    main()
