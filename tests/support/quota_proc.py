"""Agents sharing a fleet rate limit, in one process: each calls a guarded no-op at its own
rate and records when its calls were admitted.

    python -m tests.support.quota_proc CONTROL_PLANE SERVICE TAG RATE[,RATE...]

Commands: ``run SECONDS`` answers {"admitted": {agent: [wall times]}, "leased": {agent:
[wall times of the calls admitted under a lease]}, "attempted": {...}}; ``start`` sets
the agents calling until ``stop``, which answers the same; ``quit``.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Any

from mission_control.client.agent import MissionControl
from mission_control.client.errors import ResourceExhausted


class Calls:
    """One round of calls by every agent of the process, until ``seconds`` pass or ``stop``."""

    def __init__(self, agents: list[tuple[MissionControl, float]], service: str, seconds: float) -> None:
        self.service, self.seconds = service, seconds
        self.admitted: dict[str, list[float]] = {}
        self.under_lease: dict[str, list[float]] = {}
        self.attempted: dict[str, int] = {}
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.drive, args=pair) for pair in agents]
        for thread in self.threads:
            thread.start()

    def drive(self, mc: MissionControl, rate: float) -> None:
        @mc.guard(self.service)
        def call() -> None:
            return None

        budget = mc.view.get(self.service).leased[f"{self.service}.requests"]
        times: list[float] = []
        leased: list[float] = []
        tries = 0
        end = time.monotonic() + self.seconds
        next_at = time.monotonic()
        while time.monotonic() < end and not self.stopped.is_set():
            tries += 1
            try:
                call()
                times.append(time.time())
                if budget.leased:
                    leased.append(times[-1])
            except ResourceExhausted:
                pass
            next_at += 1.0 / rate
            self.stopped.wait(max(0.0, next_at - time.monotonic()))
        self.admitted[mc.agent] = times
        self.under_lease[mc.agent] = leased
        self.attempted[mc.agent] = tries

    def end(self) -> dict[str, Any]:
        """Stop calling (once ``seconds`` have passed when not told ``stop``); what was admitted."""
        for thread in self.threads:
            thread.join()
        return {"admitted": self.admitted, "leased": self.under_lease, "attempted": self.attempted}


def main() -> None:
    control_plane, service, tag, rates = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    agents = [
        (MissionControl(f"{tag}-{i}", control_plane=control_plane).start(), float(rate))
        for i, rate in enumerate(rates.split(","))
    ]
    ready = all(mc.wait_connected(60) for mc, _ in agents)
    print(json.dumps({"ready": ready}), flush=True)
    calling: Calls | None = None
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "run":
            print(json.dumps(Calls(agents, service, float(words[1])).end()), flush=True)
        elif words and words[0] == "start":
            calling = Calls(agents, service, math.inf)
        elif words and words[0] == "stop" and calling is not None:
            calling.stopped.set()
            print(json.dumps(calling.end()), flush=True)
            calling = None
        elif words and words[0] == "quit":
            break
    for mc, _ in agents:
        mc.close()


if __name__ == "__main__":
    main()
