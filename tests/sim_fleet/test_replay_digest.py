"""A schedule is a function of its seed alone: the same digest (events, violations, loop
steps, what etcd holds at the end) run twice in one process, after other schedules in
either order, and replayed from the command line in a fresh process under another
``PYTHONHASHSEED``.

State that leaked from one schedule into the next (a module-level counter or cache, the
``random`` module's global state, the order of a set of objects or of strings) or an input
outside the seed (the wall clock, ``uuid4``, ``secrets``: see ``identities.py``) would show
here as a digest that moves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .schedule import simulate

SEEDS = (2, 7, 11)
ACTIVE = 10.0
ROOT = Path(__file__).resolve().parents[2]


def _digests(order: tuple[int, ...]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for seed in order:
        found.setdefault(seed, []).append(simulate(seed, active_secs=ACTIVE).digest)
    return found


def test_schedules_replay_alike_twice_and_in_either_order() -> None:
    forward = _digests((*SEEDS, *SEEDS))
    backward = _digests(tuple(reversed(SEEDS)))
    for seed in SEEDS:
        assert len(set(forward[seed] + backward[seed])) == 1, (seed, forward[seed], backward[seed])


def test_the_command_line_replays_the_in_process_digest() -> None:
    seed = SEEDS[1]
    here = simulate(seed, active_secs=ACTIVE).digest
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        args = [sys.executable, "-m", "tests.sim_fleet", "--seed", str(seed), "--active", f"{ACTIVE:g}"]
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600).stdout
        assert f"digest {here}" in out, (hash_seed, here, out)
