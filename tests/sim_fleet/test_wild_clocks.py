"""Seeded schedules on wild clocks (``--skew wild``, ``clocks.py``): every process's wall
clock drifts up to a second a minute, and every other one steps forth and back every few
seconds for good. The same invariants hold as on clocks merely apart.

What they found so far, each shown by a scripted schedule of its own: a leader that granted
probe permits before its first load, by the default policy (``test_unloaded_leader.py``);
a follower whose restore waited for good on what a leader had told its relay while it
followed (``test_restore_handed_over.py``)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from . import vloop
from .clocks import WILD_DRIFT, Clocks
from .schedule import Result, simulate

#: Wild-clock schedules run by ``make test`` (at 10 virtual seconds of faults each).
WILD_SCHEDULES = int(os.environ.get("MC_SIM_WILD_SCHEDULES", "8"))
WILD_FIRST_SEED = int(os.environ.get("MC_SIM_WILD_FIRST_SEED", "0"))
ACTIVE = 10.0


def _run(seed: int) -> Result:
    try:
        return simulate(seed, active_secs=ACTIVE, wild=True)
    except vloop.TooManySteps as err:
        result = Result(seed, ACTIVE, skewed=True, wild=True)
        result.violations.append(f"the schedule spins: {err}")
        return result


def test_a_wild_clock_drifts_and_steps_forth_and_back() -> None:
    async def main() -> tuple[float, list[float]]:
        clocks = Clocks(1, 0.0, False, ACTIVE, wild=True)
        flapping = next(c for c in (clocks.of(f"cp{n}") for n in range(20)) if c.flap)
        assert 0 < abs(flapping.drift) <= WILD_DRIFT
        times = [flapping.start + (k + 0.5) * flapping.period for k in range(4)]
        # what the clock is off by, less its offset and drift: the step, every other period
        steps = [flapping.skew_at(t) - flapping.offset - flapping.drift * (t - flapping.start) for t in times]
        return flapping.flap, steps

    flap, steps = vloop.run(main())
    assert steps == pytest.approx([0.0, flap, 0.0, flap])
    assert abs(flap) >= 0.5


@pytest.mark.timeout(max(1800, WILD_SCHEDULES * 15))  # a backstop: each is bounded in loop steps
def test_schedules_with_wild_clocks_keep_the_invariants() -> None:
    seeds = range(WILD_FIRST_SEED, WILD_FIRST_SEED + WILD_SCHEDULES)
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=vloop.FRESH_PROCESSES) as pool:
        results = list(pool.map(_run, seeds, chunksize=2))
    failed = [r.report() for r in results if [v for v in r.violations if "(known:" not in v]]
    assert not failed, (
        f"{len(failed)} of {len(results)} wild-clock schedules broke an invariant:\n" + "\n".join(failed)
    )
