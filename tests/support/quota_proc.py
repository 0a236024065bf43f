"""Agents sharing a fleet rate limit, in one process: each calls a guarded no-op at its own
rate and records when its calls were admitted.

    python -m tests.support.quota_proc CONTROL_PLANE SERVICE TAG RATE[,RATE...]

Commands: ``run SECONDS`` answers {"admitted": {agent: [wall times]}, "leased": {agent:
[wall times of the calls admitted under a lease]}, "attempted": {...}}; ``quit``.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from mission_control.client.agent import MissionControl
from mission_control.client.errors import ResourceExhausted


def main() -> None:
    control_plane, service, tag, rates = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    agents = [
        (MissionControl(f"{tag}-{i}", control_plane=control_plane).start(), float(rate))
        for i, rate in enumerate(rates.split(","))
    ]
    ready = all(mc.wait_connected(60) for mc, _ in agents)
    print(json.dumps({"ready": ready}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "run":
            seconds = float(words[1])
            admitted: dict[str, list[float]] = {}
            under_lease: dict[str, list[float]] = {}
            attempted: dict[str, int] = {}

            def drive(
                mc: MissionControl,
                rate: float,
                seconds: float = seconds,
                admitted: dict[str, list[float]] = admitted,
                under_lease: dict[str, list[float]] = under_lease,
                attempted: dict[str, int] = attempted,
            ) -> None:
                @mc.guard(service)
                def call() -> None:
                    return None

                budget = mc.view.get(service).leased[f"{service}.requests"]
                times: list[float] = []
                leased: list[float] = []
                tries = 0
                end = time.monotonic() + seconds
                next_at = time.monotonic()
                while time.monotonic() < end:
                    tries += 1
                    try:
                        call()
                        times.append(time.time())
                        if budget.leased:
                            leased.append(times[-1])
                    except ResourceExhausted:
                        pass
                    next_at += 1.0 / rate
                    time.sleep(max(0.0, next_at - time.monotonic()))
                admitted[mc.agent] = times
                under_lease[mc.agent] = leased
                attempted[mc.agent] = tries

            threads = [threading.Thread(target=drive, args=pair) for pair in agents]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(
                json.dumps({"admitted": admitted, "leased": under_lease, "attempted": attempted}), flush=True
            )
        elif words and words[0] == "quit":
            break
    for mc, _ in agents:
        mc.close()


if __name__ == "__main__":
    main()
