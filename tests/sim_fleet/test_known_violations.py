"""Schedules that found a defect, by seed: each must keep every invariant now that its
cause is fixed (a violation known but not fixed would be kept here as a strict xfail).

A seed's schedule moves with any change to the fleet's timing, so each claim is over a few
seeds that showed it: a change that merely moves them can also end the xfail (then pick
the seeds again with ``python -m tests.sim_fleet --count N``).
"""

from __future__ import annotations

import pytest

from .schedule import simulate


def test_schedules_that_found_a_fixed_defect_keep_every_invariant() -> None:
    """20: a dead stream kept in the hub took the probe grants (in the simulated network);
    55, 327, 354: a HALF_OPEN after a lost compare-and-swap reused its generation, and the
    permits of the one superseded counted for it (``server/engine.py``); 579: a replica cut
    off from etcd while it was wiped and restored in the same order found a breaker at the
    revision it held it at, with another value, and kept its own (``server/sync.py``; the
    scripted ``test_scenarios.py::…_restored_at_its_old_revision`` shows it for good)."""
    seeds = (20, 55, 327, 354, 579)
    failed = [r.report() for r in (simulate(seed, active_secs=10.0) for seed in seeds) if not r.ok]
    assert not failed, "\n".join(failed)


def _found(seeds: tuple[int, ...], known: str) -> list[str]:
    found = []
    for seed in seeds:
        found += [f"seed {seed}: {v}" for v in simulate(seed, active_secs=10.0).violations if known in v]
    return found


def test_probes_in_flight_stay_within_the_threshold_across_a_leader_change() -> None:
    """I3 across a failover: probe permits live in the leader's memory, so a new leader
    took a HALF_OPEN over from etcd without them and granted its permits again while probes
    under the old ones still ran, and a deposed leader that did not know it yet granted
    beside its successor. A new leader now waits the probe TTL plus the policy's timeout
    before granting for a HALF_OPEN from before it, and a leader grants only while its
    lease is known to hold (``server/engine.py``, ``server/leadership.py``)."""
    found = _found((54, 85, 108, 122, 339, 522, 525, 565, 607, 616, 624), "I3:")
    assert not found, "\n".join(found)


def test_admissions_stay_within_the_limit_while_an_agent_is_cut_off() -> None:
    """73, 379: an agent cut off from every replica spent its last lease while the leader
    leased its part to the others (fixed: unleased spending ends at the horizon the
    leader keeps aside, ``fleet.unleased_secs``)."""
    found = _found((73, 379), "I4:")
    assert not found, "\n".join(found)


#: Schedules with a violation not analysed yet, left out of the schedules run (shown here).
UNANALYSED = (36, 40)


@pytest.mark.xfail(
    # not strict since a follower's relay names its agents to the leader (a hello more per
    # change of agents): that moved this schedule and it passes now; the seeds are to be
    # picked again (python -m tests.sim_fleet --count N)
    strict=False,
    reason="I4, not analysed yet: 35 admitted in one 2 s window (limit 30 + 3.75) while cp1 "
    "was partitioned from the leader cp0 and cut from etcd after a wipe; agent-0 27, agent-1 8 "
    "(shown since followers acknowledge outcome batches only once the leader has them, which "
    "moved the schedule; replay: python -m tests.sim_fleet --seed 40 --active 10 -v)",
)
def test_admissions_stay_within_the_limit_in_schedule_40() -> None:
    violations = simulate(40, active_secs=10.0).violations
    assert not [v for v in violations if v.startswith("I4:")], violations


@pytest.mark.xfail(
    # not strict since a follower's relay names its agents to the leader (a hello more per
    # change of agents): that moved this schedule and it passes now; the seeds are to be
    # picked again (python -m tests.sim_fleet --count N)
    strict=False,
    reason="I4, not analysed yet: 40 admitted in one 2 s window (limit 30 + 7.5) after agent-2 was "
    "cut off from every replica, etcd went away, the leader cp0.1 crashed and cp1 was cut from etcd "
    "(shown once the per-agent split, follower acks and permit waits were all in; replay: "
    "python -m tests.sim_fleet --seed 36 --active 10 -v)",
)
def test_admissions_stay_within_the_limit_in_schedule_36() -> None:
    violations = simulate(36, active_secs=10.0).violations
    assert not [v for v in violations if v.startswith("I4:")], violations
