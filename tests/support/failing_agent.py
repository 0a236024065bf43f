"""An agent process whose guarded calls fail, driven from stdin, answering JSON on stdout.

    python -m tests.support.failing_agent AGENT_ID CONTROL_PLANE SERVICE

Prints {"ready": ..} once connected. Commands: ``fail N [GAP]`` (N guarded calls, one after
another — GAP seconds apart, so that they go in several batches —, each raising
ConnectionRefusedError: failures reported to the control plane), ``policy`` (the service's
failure threshold in force: the defaults until the control plane's arrives),
``state`` (the service's fleet state as this agent holds it (name and generation), and its outcome batches not
acknowledged yet, and the control plane its stream is on now), ``quit``.
"""

from __future__ import annotations

import json
import sys
import time

from mission_control.client.agent import MissionControl


def refused() -> None:
    raise ConnectionRefusedError("the dependency is down")


def main() -> None:
    agent_id, control_plane, service = sys.argv[1:4]
    mc = MissionControl(
        agent_id, control_plane=control_plane.split(","), services=[service], flush_interval=0.02
    )
    mc.start()
    print(json.dumps({"ready": mc.wait_connected(60)}), flush=True)
    call = mc.guard(service)(refused)
    failed, other = 0, []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "fail":
            gap = float(words[2]) if len(words) > 2 else 0.0
            for _ in range(int(words[1])):
                time.sleep(gap)
                try:
                    call()
                except Exception as err:  # the dependency's own error, or a rejection
                    if isinstance(err, ConnectionRefusedError) or isinstance(
                        err.__cause__, ConnectionRefusedError
                    ):
                        failed += 1
                    else:
                        other.append(type(err).__name__)
            print(json.dumps({"failed": failed, "other": other}), flush=True)
        elif words[0] == "policy":
            print(json.dumps({"failure_threshold": mc.policy(service).failure_threshold}), flush=True)
        elif words[0] == "state":
            fleet = mc.view.get(service).fleet
            connection = mc.connection
            state = {
                "state": fleet.state.name if fleet else None,
                "generation": fleet.generation if fleet else None,
                "unacked": len(connection._unacked),
                "sent": connection.batches_sent,
                "endpoint": connection.current_endpoint,
            }
            print(json.dumps(state), flush=True)
        elif words[0] == "quit":
            break
    mc.close()


if __name__ == "__main__":
    main()
