"""Schedules that found a defect, by seed: each must keep every invariant now that its
cause is fixed (a violation known but not fixed would be kept here as a strict xfail).

A seed's schedule moves with any change to the fleet's timing, so each claim is over a few
seeds that showed it: a change that merely moves them can also end the xfail (then pick
the seeds again with ``python -m tests.sim_fleet --count N``). Each seed runs at the
schedule version it was picked at (``schedule.SCHEDULE_VERSION``): every one here was picked
before the epoch record's faults (version 1), which would replace its schedule.
"""

from __future__ import annotations

import pytest

from .schedule import FIRST_SCHEDULES, Result, simulate


def _replay(seed: int, active_secs: float = 10.0) -> Result:
    """Schedule ``seed`` as it was when picked."""
    return simulate(seed, active_secs=active_secs, version=FIRST_SCHEDULES)


def test_schedules_that_found_a_fixed_defect_keep_every_invariant() -> None:
    """20: a dead stream kept in the hub took the probe grants (in the simulated network);
    55, 327, 354: a HALF_OPEN after a lost compare-and-swap reused its generation, and the
    permits of the one superseded counted for it (``server/engine.py``); 579: a replica cut
    off from etcd while it was wiped and restored in the same order found a breaker at the
    revision it held it at, with another value, and kept its own (``server/sync.py``; the
    scripted ``test_scenarios.py::…_restored_at_its_old_revision`` shows it for good)."""
    seeds = (20, 55, 327, 354, 579)
    failed = [r.report() for r in (_replay(seed) for seed in seeds) if not r.ok]
    assert not failed, "\n".join(failed)


def _found(seeds: tuple[int, ...], known: str) -> list[str]:
    found = []
    for seed in seeds:
        found += [f"seed {seed}: {v}" for v in _replay(seed).violations if known in v]
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


def test_probes_stay_within_the_threshold_when_a_deposed_leader_decided_half_open_from_memory() -> None:
    """1077, 1084 (and the reviewer's 1007 on an earlier main), at ``--active 40``: the
    leader, cut from etcd, moved OPEN -> HALF_OPEN from memory (never stored) and granted a
    permit while its lease still held; its successor read the OPEN from etcd, decided its
    own HALF_OPEN of the same generation after its takeover, and granted at once: two
    probes. A protocol defect, not an artefact: the old leader's lease check was right
    (it stops TTL - margin after its last renewal was sent), but a successor only waited
    for HALF_OPENs it found. Fixed: a leader that saw another lead waits the probe TTL
    plus the timeout before granting for any breaker (``server/engine.py``)."""
    found = []
    for seed in (1077, 1084):
        found += [f"seed {seed}: {v}" for v in _replay(seed, 40.0).violations if "I3:" in v]
    assert not found, "\n".join(found)


def test_admissions_stay_within_the_limit_while_an_agent_is_cut_off() -> None:
    """73, 379: an agent cut off from every replica spent its last lease while the leader
    leased its part to the others (fixed: unleased spending ends at the horizon the
    leader keeps aside, ``fleet.unleased_secs``)."""
    found = _found((73, 379), "I4:")
    assert not found, "\n".join(found)


def test_admissions_stay_within_the_limit_when_a_leader_takes_over_before_its_watch() -> None:
    """4097 at ``--active 40`` (period 1 s, 15 units): cp1, cut from etcd for cp0's whole
    term, won the campaign 0.6 s after it reached etcd again, before its watch reloaded;
    it had seen no epoch record, took the fleet for a new one and leased its agent 12 of
    the 15 while cp0's agents spent cp0's last leases and then their own: 46 in a 2 s
    window against 45. Fixed: a leader takes its view of the record as known only once
    the store was read since its takeover (``server/takeover_read.py``;
    ``tests/server/test_takeover_read.py`` shows it for good).

    3130 at ``--active 40`` (period 0.5 s, 7.5 units), the same defect: cp0.2 led and
    leased while etcd paused; cp1.1 won the campaign 3 ms after etcd came back, while its
    reload from the store was still on its way, and leased agent-2 7 a period while agent-1,
    cut off from every replica, spent its last lease of 4 a period from cp0.2's term: 47 in
    a 2 s window against 37.5. On the main just after the fix (50aa268) putting the old
    rule back gives those 47 again; on today's timing the schedule no longer shows it
    with the old rule, so for 3130 this is a plain check of every invariant."""
    for seed in (4097, 3130):
        violations = _replay(seed, 40.0).violations
        assert not [v for v in violations if v.startswith("I4:")], (seed, violations)


def test_an_agent_behind_a_follower_cut_from_the_leader_is_not_owed_a_permit() -> None:
    """4091 at ``--active 40``: a follower partitioned from the leader twice over (the first
    heal ended both, the second partition followed 0.84 s later); its relay, trying once a
    second, missed the gap, and I3 took an agent asking through it as owed a permit within
    one probe TTL. A checker defect: a permit reaches such an agent only over the relay, so
    it is owed one once the relay is linked, or a retry after the path to the leader opened
    (``fleet_checks.RELAY_RETRY_SECS``)."""
    violations = _replay(4091, 40.0).violations
    assert not [v for v in violations if v.startswith("I3:")], violations


def test_a_leader_takes_its_own_write_answered_late_as_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    """5049 at ``--active 40``: etcd slow, cp1.1's HALF_OPEN (gen 2) was stored but its
    answer came after the 2-s deadline; cp1.1 decided OPEN (gen 3, a failed probe) and
    HALF_OPEN (gen 4) meanwhile, and its next try lost the compare-and-swap to its own
    write, which it adopted as made elsewhere: back from gen 4 to 2, the failed probe's OPEN
    lost, the HALF_OPEN taken for one whose permits went out elsewhere — no permit for a
    healthy service for 17 s (an I3 violation on the main it was found on). Fixed: a
    conflict with a record this replica sent whose answer was lost is its own write, taken
    as stored (``server/unanswered.py``, ``server/writes.py``). On today's timing the
    leader restarts 0.8 s after that conflict and its successor's hold covers the wait, so
    the old rule no longer shows a violation here: the schedule still meets its own late
    write, which this checks; ``test_late_answer.py`` shows the defect for good."""
    from mission_control.server.unanswered import UnansweredWrites

    met: list[bool] = []
    own = UnansweredWrites.own

    def seen(self: UnansweredWrites, name: str, stored: bytes | None) -> tuple[bool, int | None]:
        found = own(self, name, stored)
        met.append(found[0])
        return found

    monkeypatch.setattr(UnansweredWrites, "own", seen)
    violations = _replay(5049, 40.0).violations
    assert not violations, violations
    assert any(met), "the schedule no longer meets a write of its own answered late"


#: Schedules with a violation not analysed yet, left out of the schedules run (shown here).
UNANALYSED: tuple[int, ...] = ()

#: I4 at ``--active 40``, analysed on the main of the review (the fix belongs to the fleet
#: lease allocation, ``server/capacity.py``); on today's timing these seeds keep every
#: invariant, so they cannot be a strict xfail: the defects stand until fixed.
#:
#: 506 (period 1 s, 15 units): etcd was wiped while cp0 restarted; agent-1, behind cp1 cut
#: from etcd, held a lease of 7 from the epoch before and spent it each period until its
#: horizon (1034). The new leader knew neither the old epoch's leases nor its horizons
#: (kept in memory and etcd, both lost) and leased agent-2 the whole 15: 22 a period, 50
#: in a 2 s window against 45. Protocol defect: a leader starting an epoch without the
#: record of the last one must keep aside the whole limit's unleased share until the
#: longest horizon (``fleet.unleased_secs``) has passed since it took over.
#:
#: 1091 (period 0.5 s, 7.5 units): no leader for 3 s (it crashed while etcd was away);
#: the three agents spent their last leases, 3 + 3 + 2 = 8 a period against 7.5: 39 in a
#: 2 s window against 37.5. Protocol defect: integer shares of a fractional limit are
#: rounded up in some periods (the average holds only while leases keep coming); a last
#: lease spent again and again must be the rounded-down share (or the split must never
#: exceed floor(limit) in any one period).
#:
#: 1150 (period 0.25 s, 3.75 units: 34 in a window against 33.75): not analysed (no
#: replay log was kept; it keeps every invariant on today's timing).
KNOWN_I4_AT_ACTIVE_40: tuple[int, ...] = (506, 1091, 1150)


def test_admissions_stay_within_the_limit_in_schedule_36() -> None:
    """36 (lease period 0.5 s, 7.5 units): agent-2, behind the follower cp2, was cut off
    from every replica holding a lease of 3 and spent it; cp2 dropped it from its demand at
    once, so the leader leased those 3 units to agent-0 and agent-1. Then etcd went away
    and the leader crashed: no leader for 3 s, every agent spending its last lease, 5 + 1 +
    3 = 9 a period, 40 in a 2 s window against 37.5. Fixed: a follower keeps an agent gone
    from it without a goodbye until its horizon (``server/relay_leases.py``)."""
    violations = _replay(36).violations
    assert not [v for v in violations if v.startswith("I4:")], violations


def test_admissions_stay_within_the_limit_in_schedule_40() -> None:
    """40 (period 0.25 s, 3.75 units): agent-1's link to the follower cp2 broke and it came
    back on cp1, partitioned from the leader (and later cut from etcd), spending its last
    lease of 1.5 a period; cp2 dropped it from its demand, and the leader leased agent-0,
    alone behind cp2 now, all 3 units: 35 in a window against 33.75. Same cause and fix
    as 36."""
    violations = _replay(40).violations
    assert not [v for v in violations if v.startswith("I4:")], violations


def test_a_replica_leading_again_after_a_wipe_starts_a_new_epoch() -> None:
    """0 at version 1: cp0.1 led after a wipe of etcd (its leader key created at a low
    revision), lost the lead to cp1.1 (which leased in a new epoch), and took it back after a
    second wipe — its new leader key created at the same revision as its first. A term was
    told by that revision, so cp0.1 took the second term for the first and leased in its old
    epoch, below the one its agents held: they ignored every lease to the end. Fixed: a term
    is :attr:`Leadership.term`, which rises with every takeover of a replica."""
    violations = _replay(0).violations
    assert not [v for v in violations if v.startswith("I4:")], violations


def test_schedule_0_catches_a_term_told_by_the_leader_key_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same schedule with a term told by the key's revision again."""
    from mission_control.server.leadership import Leadership

    monkeypatch.setattr(Leadership, "term", property(lambda self: self.epoch))
    assert [v for v in _replay(0).violations if "holds fleet-lease epoch" in v]
