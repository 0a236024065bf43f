"""Agents in one process calling a service that fails, to count their retries.

    python -m tests.support.retry_proc CONTROL_PLANE SERVICE TAG AGENTS RATE

Commands: ``run SECONDS [EVERY]`` makes RATE calls a second per agent, every EVERY-th of
them failing each attempt (default 1: all; the others succeed), and answers {"calls": n,
"attempts": m, "leased": [whether each agent's retries were leased at the end]}; ``quit``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time

from mission_control.client.agent import MissionControl


def drive(
    mc: MissionControl, service: str, seconds: float, rate: float, every: int, totals: dict[str, int]
) -> None:
    """``rate`` calls a second for ``seconds``, every ``every``-th failing; adds them and
    their attempts."""
    attempts = 0

    @mc.guard(service)
    def call(failing: bool) -> None:
        nonlocal attempts
        attempts += 1
        if failing:
            raise ConnectionRefusedError("down")

    calls, end, next_at = 0, time.monotonic() + seconds, time.monotonic()
    while time.monotonic() < end:
        calls += 1
        with contextlib.suppress(ConnectionRefusedError):  # a failing call: attempts matter
            call(calls % every == 0)
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    with _lock:
        totals["calls"] += calls
        totals["attempts"] += attempts


_lock = threading.Lock()


def main() -> None:
    control_plane, service, tag, count, rate = sys.argv[1:6]
    agents = [MissionControl(f"{tag}-{i}", control_plane=control_plane).start() for i in range(int(count))]
    print(json.dumps({"ready": all(mc.wait_connected(60) for mc in agents)}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "run":
            totals = {"calls": 0, "attempts": 0}
            every = int(words[2]) if len(words) > 2 else 1
            args = (service, float(words[1]), float(rate), every, totals)
            threads = [threading.Thread(target=drive, args=(mc, *args)) for mc in agents]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            budgets = [mc.view.get(service).leased.get(f"{service}.retries") for mc in agents]
            leased = [budget is not None and budget.agents > 0 for budget in budgets]
            print(json.dumps({**totals, "leased": leased}), flush=True)
        elif words and words[0] == "quit":
            break
    for mc in agents:
        mc.close()


if __name__ == "__main__":
    main()
