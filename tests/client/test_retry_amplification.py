"""Retry amplification in a full outage stays within 1.3x at a slow steady rate: agents in
their own processes call a real upstream that fails every call, at 1 and 5 calls a
second, with the default retry budget and ``max_retries = 3`` (before the budget's floor
needed a healthy service: 2.2x and 1.4x). The pure logic at every rate:
``test_retry_budget.py``."""

from __future__ import annotations

import json

from tests.support.procs import Proc, python
from tests.support.upstream import Upstream

GOAL = 1.3
#: At 1 call a second the first failing call's 3 retries (the floor of a service that was
#: working) weigh 0.1 per call over 30 calls; over a shorter outage they weigh more.
OUTAGE_SECS = 30


def test_amplification_at_one_and_five_calls_a_second(spawned: list[Proc]) -> None:
    with Upstream("slow-rate") as one, Upstream("five-rate") as five:
        agents = {}
        for rate, upstream in ((1, one), (5, five)):
            upstream.set("fail", code="UNAVAILABLE")
            agents[rate] = python("tests.support.paced_agent", upstream.address, str(rate))
            spawned.append(agents[rate])
        for agent in agents.values():
            assert '"ready": true' in agent.wait_for('{"ready"', timeout=60)
            agent.lines.clear()
            agent.send(f"run {OUTAGE_SECS}")
        runs = {
            rate: json.loads(agent.wait_for("{", timeout=OUTAGE_SECS + 60)) for rate, agent in agents.items()
        }
        attempts = {1: one.calls, 5: five.calls}
    for rate, run in runs.items():
        assert run["failed"] == run["calls"] >= rate * OUTAGE_SECS - 1, run
        assert run["calls"] < attempts[rate] <= GOAL * run["calls"], (rate, run, attempts[rate])
