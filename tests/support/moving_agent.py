"""An agent process whose calls all fail, driven line by line from stdin (JSON answers).

    python -m tests.support.moving_agent AGENT_ID CONTROL_PLANE[,CONTROL_PLANE...] SERVICE

Prints {"ready": true} once connected. ``fail N``: N guarded calls, each raising
ConnectionRefusedError (a failure the breaker counts), answered with the failures seen so
far; ``policy``: the service's failure threshold in force; ``state``: the control plane
the stream is on now and the outcome batches it has not seen acknowledged; ``quit``.
"""

from __future__ import annotations

import json
import sys
import time

from mission_control.client.agent import MissionControl


def _refused() -> None:
    raise ConnectionRefusedError("upstream down")


def main() -> None:
    agent_id, control_planes, service = sys.argv[1:4]
    mc = MissionControl(agent_id, control_plane=control_planes.split(","), flush_interval=0.02).start()
    print(json.dumps({"ready": mc.wait_connected(60)}), flush=True)
    failed = 0
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "fail":
            for _ in range(int(words[1])):
                try:
                    mc.guard(service)(_refused)()
                except Exception:  # as raised, or as the taxonomy names it
                    failed += 1
                time.sleep(0.03)  # a batch every few calls (flush_interval)
            print(json.dumps({"failed": failed}), flush=True)
        elif words[0] == "policy":  # (the defaults until the control plane's arrives)
            print(json.dumps({"failure_threshold": mc.policy(service).failure_threshold}), flush=True)
        elif words[0] == "state":
            connection = mc.connection
            print(
                json.dumps({"endpoint": connection.current_endpoint, "unacked": len(connection._unacked)}),
                flush=True,
            )
        elif words[0] == "quit":
            break
    mc.close()


if __name__ == "__main__":
    main()
