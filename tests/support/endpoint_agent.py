"""An agent process calling endpoints of one service, driven line by line from stdin.

    python -m tests.support.endpoint_agent AGENT_ID CONTROL_PLANE SERVICE ENDPOINT=UPSTREAM,...

Each endpoint's calls go to its upstream (an echo server). Commands: ``call ENDPOINT N
[FALLBACK_ENDPOINT]`` (N calls through ``guard(SERVICE, endpoint=ENDPOINT)``, falling back
to another endpoint), ``until_state BREAKER STATE``, ``names`` (the breakers this agent
holds), ``quit``. Answers are JSON lines.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.errors import MissionControlError

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


def main() -> None:
    agent_id, control_plane, service, upstreams = sys.argv[1:5]
    stubs = {}
    for pair in upstreams.split(","):
        endpoint, address = pair.split("=", 1)
        stubs[endpoint] = pb_grpc.EchoServiceStub(grpc.insecure_channel(address))
    mc = MissionControl(agent_id, control_plane=control_plane.split(","), flush_interval=0.02)
    mc.start()
    print(json.dumps({"ready": mc.wait_connected(30)}), flush=True)

    def echo(endpoint: str) -> str:
        return stubs[endpoint].Echo(pb.EchoRequest(text="x"), timeout=5).served_by  # type: ignore[no-any-return]

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "call":
            endpoint, n = words[1], int(words[2])
            fallbacks = {}
            if len(words) > 3:
                other = words[3]
                fallbacks[f"{service}/{other}"] = lambda other=other: echo(other)
            guarded = mc.guard(service, endpoint=endpoint, fallbacks=fallbacks)(
                lambda endpoint=endpoint: echo(endpoint)
            )
            outcomes: Counter[str] = Counter()
            for _ in range(n):
                try:
                    outcomes[f"served by {guarded()}"] += 1
                except MissionControlError as err:
                    outcomes[err.error_type] += 1
                except grpc.RpcError as err:
                    outcomes[err.code().name] += 1
            print(json.dumps({"outcomes": outcomes}), flush=True)
        elif words[0] == "until_state":
            name, wanted = words[1], words[2]
            end = time.monotonic() + 30
            seen = None
            while time.monotonic() < end:
                state = mc.view.services.get(name)
                fleet = state.fleet if state is not None else None
                seen = fleet.state.name if fleet is not None else None
                if seen == wanted:
                    break
                time.sleep(0.005)
            print(json.dumps({"state": seen}), flush=True)
        elif words[0] == "names":
            print(json.dumps({"names": sorted(mc.view.services)}), flush=True)
        elif words[0] == "quit":
            break
    mc.close()


if __name__ == "__main__":
    main()
