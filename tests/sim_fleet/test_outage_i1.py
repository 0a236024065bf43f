"""The simulation's I1 while etcd is away (``outage_checks``) asks only what a replica can know."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_i1_while_etcd_is_paused_is_asked_once_a_replica_can_have_noticed() -> None:
    """Seed 3 at ``--active 80``: cp0.3 started over a malformed svc-a record and led holding
    it CLOSED (gen 0, never stored); follower cp2.2 kept its last good HALF_OPEN gen 8, resting
    on a later revision, so its agents were told that while etcd answered. etcd paused 0.8 s
    later; 2.0 s into the pause the check took the leader's CLOSED as in force while neither
    replica's health check had timed out yet (the store's request timeout is 2.0 s, a ping
    every 0.5 s), and at the next sample, the follower cut off, its agents held CLOSED.
    Replayed as ``python -m tests.sim_fleet`` replays it, in a process of its own: inside the
    test runner's process this schedule runs otherwise and passes either way."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.sim_fleet", "--seed", "3", "--active", "80"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0 and "I1:" not in done.stdout, done.stdout[-3000:]
