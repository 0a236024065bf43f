"""One agent process calling a guarded no-op on a fleet-limited service, driven from stdin.

    python -m tests.support.twin_agent CONTROL_PLANE SERVICE AGENT_ID [old]

"old": the agent sends no instance id in its hello (as agents did before instances).
Prints {"ready": .., "instance": ..} once connected. Commands: ``pace RATE`` (start calling
RATE times a second, in a thread, until ``counts``), ``counts`` (stop calling; answers
{"admitted": n, "leased": n admitted under a lease, "attempted": n}), ``peek`` (the same
counts so far, calling on), ``quit`` (closes, saying goodbye).
"""

from __future__ import annotations

import json
import sys
import threading
import time

from mission_control.client.agent import MissionControl
from mission_control.client.errors import ResourceExhausted


class Pacer:
    def __init__(self, mc: MissionControl, service: str, rate: float) -> None:
        self.mc, self.service, self.rate = mc, service, rate
        self.counts = {"admitted": 0, "leased": 0, "attempted": 0}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        @self.mc.guard(self.service)
        def call() -> None:
            return None

        budget = self.mc.view.get(self.service).leased[f"{self.service}.requests"]
        next_at = time.monotonic()
        while not self.stopping.is_set():
            self.counts["attempted"] += 1
            try:
                call()
                self.counts["admitted"] += 1
                self.counts["leased"] += 1 if budget.leased else 0
            except ResourceExhausted:
                pass
            next_at += 1.0 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> dict[str, int]:
        self.stopping.set()
        self.thread.join()
        return self.counts


def main() -> None:
    control_plane, service, agent_id = sys.argv[1:4]
    mc = MissionControl(agent_id, control_plane=control_plane, services=[service])
    if sys.argv[4:] == ["old"] and mc.connection is not None:
        mc.connection.instance = ""
    mc.start()
    instance = mc.connection.instance if mc.connection is not None else ""
    print(json.dumps({"ready": mc.wait_connected(60), "instance": instance}), flush=True)
    pacer: Pacer | None = None
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["pace"]:
            pacer = Pacer(mc, service, float(words[1]))
        elif words[:1] == ["counts"]:
            counts = pacer.stop() if pacer is not None else {}
            pacer = None
            print(json.dumps(counts), flush=True)
        elif words[:1] == ["peek"]:  # the counts so far; the pacing goes on
            print(json.dumps(dict(pacer.counts) if pacer is not None else {}), flush=True)
        elif words[:1] == ["quit"]:
            break
    if pacer is not None:
        pacer.stop()
    mc.close()


if __name__ == "__main__":
    main()
