"""Many agents in one process, each with its own control-plane stream, for the config
propagation case. Commands on stdin: ``watch SERVICE VALUE`` answers, per agent, the wall
time at which its view first enforced ``timeout_secs == VALUE``."""

from __future__ import annotations

import json
import sys
import time

from mission_control.client.agent import MissionControl


def main() -> None:
    control_plane, count, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    agents = [MissionControl(f"{tag}-{i}", control_plane=control_plane).start() for i in range(count)]
    ready = all(a.wait_connected(60) for a in agents)
    print(json.dumps({"ready": ready}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "watch":
            service, value = words[1], float(words[2])
            for agent in agents:
                agent.view.get(service)
            print(json.dumps({"watching": True}), flush=True)
            seen: dict[int, float] = {}
            end = time.monotonic() + 30
            while len(seen) < len(agents) and time.monotonic() < end:
                now = time.time()
                for i, agent in enumerate(agents):
                    if i not in seen and agent.view.services[service].policy.timeout_secs == value:
                        seen[i] = now
                time.sleep(0.0005)
            print(json.dumps({"seen": list(seen.values()), "missing": len(agents) - len(seen)}), flush=True)
        elif words[0] == "quit":
            break
    for agent in agents:
        agent.close()


if __name__ == "__main__":
    main()
