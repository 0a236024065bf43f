"""An agent that keeps calling one upstream from several threads, naming each call's kind.

    python -m tests.support.probe_agent AGENT_ID CONTROL_PLANES UPSTREAM SERVICE THREADS

CONTROL_PLANES: the replicas' addresses, comma-separated (it moves to a live one when its
own goes away). Each call is one guarded attempt; its ``probe-kind`` metadata says under
what it was admitted: "fleet" (a fleet probe permit), "local" (a probe of this agent's own
breaker) or "none" (an ordinary call), so the upstream can count the fleet's probes in
flight (tests.support.probe_upstream). A refused call is tried again 50 ms later.

Prints {"ready": bool} once connected. ``state`` answers {"state": the fleet breaker as
this agent sees it, "connected": bool, "endpoint": the replica it is connected to};
``outcomes`` answers {"outcomes": {outcome: count}} so far; ``batches`` answers
{"numbered": the sequence of the last outcome batch made, "pending": those not acknowledged
yet} (what the control plane took: a replica acknowledges a batch once counted, a
follower once its leader counted it); ``stop`` answers the same as ``outcomes`` and exits.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter

import grpc
from mission_control.client.agent import MissionControl
from mission_control.client.deadline import current_deadline
from mission_control.client.errors import MissionControlError
from mission_control.client.guard import _open

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


def _kind() -> str:
    """What the innermost guarded block of this thread was admitted as. (The ticket is not
    public API: this reads the guard's own record of its open blocks.)"""
    return str(_open.get()[-1].ticket.probe or "none")


def _call(mc: MissionControl, stub: pb_grpc.EchoServiceStub, service: str) -> str:
    try:
        with mc.guard(service):
            metadata = (("probe-kind", _kind()), ("agent", mc.agent))
            stub.Echo(pb.EchoRequest(text=mc.agent), metadata=metadata, timeout=current_deadline())
        return "ok"
    except MissionControlError as err:
        return err.error_type
    except grpc.RpcError as err:
        return str(err.code().name)


def _batches(mc: MissionControl) -> dict[str, object]:
    """The numbering of the outcome batches (not public API: the connection's own record)."""
    unacked = mc.connection._unacked if mc.connection is not None else None
    if unacked is None:
        return {"numbered": 0, "pending": []}
    with unacked._lock:
        return {"numbered": unacked._sequence, "pending": sorted(unacked._pending)}


def main() -> None:
    agent_id, control_planes, upstream, service, threads = sys.argv[1:6]
    mc = MissionControl(agent_id, control_plane=control_planes.split(","), flush_interval=0.02).start()
    stub = pb_grpc.EchoServiceStub(grpc.insecure_channel(upstream))
    print(json.dumps({"ready": mc.wait_connected(60)}), flush=True)
    outcomes: Counter[str] = Counter()
    lock, stop = threading.Lock(), threading.Event()

    def drive() -> None:
        while not stop.is_set():
            outcome = _call(mc, stub, service)
            with lock:
                outcomes[outcome] += 1
            if outcome != "ok":
                stop.wait(0.05)

    callers = [threading.Thread(target=drive, daemon=True) for _ in range(int(threads))]
    for caller in callers:
        caller.start()
    for line in sys.stdin:
        if line.strip() == "state":
            fleet = mc.view.get(service).fleet
            endpoint = mc.connection.current_endpoint if mc.connection is not None else None
            state = fleet.state.name if fleet is not None else None
            print(json.dumps({"state": state, "connected": mc.connected, "endpoint": endpoint}), flush=True)
        elif line.strip() == "batches":
            print(json.dumps(_batches(mc)), flush=True)
        elif line.strip() == "outcomes":
            with lock:
                print(json.dumps({"outcomes": outcomes}), flush=True)
        elif line.strip() == "stop":
            break
    stop.set()
    for caller in callers:
        caller.join()
    print(json.dumps({"outcomes": outcomes}), flush=True)
    mc.close()


if __name__ == "__main__":
    main()
