"""One agent calling a guarded no-op under a fleet limit until told to stop, in its own
process, knowing the control-plane addresses it is given.

    python -m tests.support.horizon_agent AGENT_ID CONTROL_PLANE[,CONTROL_PLANE...] SERVICE RATE

Prints {"ready": bool} once connected, {"first": wall time} at its first admitted call.
``stop`` answers {"admitted": [wall times],
"cut_off": [wall times of refusals saying the agent has had no fleet lease for too long],
"refused": n, "refusals": [wall times of every refusal], "leases": [[wall time received,
period (its start in wall-clock ms), units, seconds it was said to start in]]} and exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from mission_control.client.agent import MissionControl
from mission_control.client.errors import ResourceExhausted
from mission_control.resilience.v1 import control_plane_pb2 as pb

#: What a refusal says when the agent has gone without a fleet lease for too long.
CUT_OFF = "no fleet lease for"


def record_leases(mc: MissionControl) -> list[list[float]]:
    """Every lease the agent receives, as it arrives (see the module's ``leases``)."""
    leases: list[list[float]] = []
    apply = mc.view.apply_lease

    def recorded(lease: pb.CapacityLease) -> None:
        leases.append([time.time(), lease.period, lease.units, lease.starts_in.ToNanoseconds() / 1e9])
        apply(lease)

    mc.view.apply_lease = recorded  # type: ignore[method-assign]
    return leases


def main() -> None:
    agent_id, control_plane, service, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    mc = MissionControl(agent_id, control_plane=control_plane.split(","))
    leases = record_leases(mc)
    mc.start()
    print(json.dumps({"ready": mc.wait_connected(60)}), flush=True)
    admitted: list[float] = []
    cut_off: list[float] = []
    refusals: list[float] = []
    refused = [0]
    stop = threading.Event()

    @mc.guard(service)
    def call() -> None:
        return None

    def drive() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                call()
                admitted.append(time.time())
                if len(admitted) == 1:
                    print(json.dumps({"first": admitted[0]}), flush=True)
            except ResourceExhausted as err:
                refused[0] += 1
                refusals.append(time.time())
                if any(CUT_OFF in cause for cause in err.cause_chain()):
                    cut_off.append(time.time())
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    caller = threading.Thread(target=drive, daemon=True)
    caller.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()
    caller.join()
    print(
        json.dumps(
            {
                "admitted": admitted,
                "cut_off": cut_off,
                "refused": refused[0],
                "refusals": refusals,
                "leases": leases,
            }
        ),
        flush=True,
    )
    mc.close()


if __name__ == "__main__":
    main()
