"""Seeded fault schedules for the probe permits (I3) and the fleet leases (I4).

``make test`` runs a hundred schedules of each, ``make soak`` thousands
(``MC_SIM_SCHEDULES``). A failing schedule names its seed; ``MC_SIM_SEED=<seed>`` replays
exactly that one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from . import leases, probes

SCHEDULES = int(os.environ.get("MC_SIM_SCHEDULES", "100"))
ONE = os.environ.get("MC_SIM_SEED")
SEEDS = [int(ONE)] if ONE else list(range(SCHEDULES))


def check(name: str, run: Callable[[int], list[str]]) -> None:
    failed = {}
    for seed in SEEDS:
        violations = run(seed)
        if violations:
            failed[seed] = violations[:3]
    assert not failed, "\n".join(
        f"{name} schedule {seed} broke an invariant (replay: MC_SIM_SEED={seed} pytest tests/sim): {v}"
        for seed, v in failed.items()
    )


@pytest.mark.timeout(1800)
def test_probe_permits_hold_i3_under_faults() -> None:
    check("probe", probes.run)


@pytest.mark.timeout(1800)
def test_probe_permits_hold_i3_with_clocks_apart() -> None:
    """The same schedules with the engine's and each agent's wall clock up to 10 s off."""
    check("probe (clocks apart)", lambda seed: probes.run(seed, skewed=True))


@pytest.mark.timeout(1800)
def test_leases_hold_i4_under_faults() -> None:
    check("lease", leases.run)
