"""Schedules of a sweep of the merged fleet that failed (a checker asking more than the
design gives, or a product defect), each replayed as ``python -m tests.sim_fleet --seed N``
replays it, in a process of its own (inside the test runner's process these schedules run
otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _replayed(seed: int, active: float | None = None) -> str:
    """What replaying schedule ``seed`` prints: its violations, or ``ok``."""
    args = [sys.executable, "-m", "tests.sim_fleet", "--seed", str(seed)]
    if active is not None:
        args += ["--active", str(active)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=170)
    return done.stdout + done.stderr[-2000:]


def test_no_permit_is_owed_while_the_leader_waits_out_the_hold_of_a_relay_that_went() -> None:
    """Seed 179: leader cp1.2 granted the one permit of svc-c gen 7 to follower cp2.3's relay
    (1035.15); cp2.3 was partitioned from cp1 and crashed. Its agents may run a probe under
    what it handed them, so the leader counts the permit until its hold (TTL + the policy's
    timeout) has passed (``FleetBreakers.release_agent``) and agent-3, asking through cp0.1,
    got none: the check asked for one within a TTL of nothing in flight."""
    out = _replayed(179)
    assert "seed 179: ok" in out, out


def test_a_follower_deposed_over_a_malformed_record_tells_its_agents_the_leaders_state() -> None:
    """Seeds 65 and 137: a leader decided svc-b OPEN (svc-a HALF_OPEN) from memory over a
    malformed record, was fenced on etcd's return, and its writer, as a follower, took the
    record's revision for what it held: its superseded decision then rested on a later
    revision than the new leader's CLOSED and was told to its agents, which held CLOSED."""
    for seed in (65, 137):
        out = _replayed(seed)
        assert f"seed {seed}: ok" in out, out


def test_an_unstored_transition_of_a_crashed_leader_lapses_for_its_agents_within_a_push() -> None:
    """Seed 50231: leader cp0.1, cut from etcd, decided svc-c OPEN and then HALF_OPEN from
    memory (not stored) and pushed them; follower cp1.2 passed them on to agent-1. cp0.1
    crashed at 1008.189 and the check at 1008.20 asked agent-1, still holding HALF_OPEN, to
    hold etcd's CLOSED: until the crash the check itself took the pending transition for the
    state in force, so etcd's CLOSED is in force from the crash only, and an agent has a push
    to hear it (I1). The check now waits a push after a replica crashed holding a transition
    of the breaker not stored."""
    out = _replayed(50231)
    assert "seed 50231: ok" in out, out


def test_a_probe_under_a_breaker_started_over_after_etcd_was_wiped_is_reported() -> None:
    """Seed 7073 at ``--active 80``: agent-0 counted probes of svc-b for generation 6; etcd
    was wiped and every replica restarted, the agent's new stream held no svc-b, and svc-b
    began again CLOSED (0), OPEN (1), HALF_OPEN (2). Leader cp1.3 granted agent-0 the one
    permit (1037.55, held to 1072.55); the probe's result (1038.27) was dropped by the
    agent's tally, still counting generation 6, so the leader never heard back and the
    agent asked 7 s without a permit (I3). Same defect as the scripted
    ``test_generation_start_over``."""
    out = _replayed(7073, 80)
    assert "seed 7073: ok" in out, out


def test_a_follower_tells_the_closed_a_leader_decided_over_its_own_write_answered_late() -> None:
    """Seed 60150: leader cp0.2's write of svc-c's HALF_OPEN (gen 2) landed at revision 37
    but was answered only after etcd went away; its watch's echo was ignored while the
    write was pending, so cp0.2 held svc-c at revision 36 and the CLOSED (gen 3) it decided
    from memory rested on 36: follower cp1.2, which read the HALF_OPEN at 37, kept telling
    agents 0, 3 and 5 HALF_OPEN (I1 while etcd is away). Same defect as the scripted
    ``test_leader_answer_lost``."""
    out = _replayed(60150)
    assert "seed 60150: ok" in out, out


def test_a_follower_that_leads_pushes_its_own_state_over_the_leaders_it_told_all() -> None:
    """Seed 60302: follower cp2.2 passed on leader cp0.5's svc-b HALF_OPEN (gen 2, from
    memory, etcd away) to agent-2; cp0.5 crashed and cp2.2 led. Its answer to one agent's
    probe request (CLOSED) ended what it told of the leader's state, so the release of the
    leader's states pushed nothing of svc-b, and agent-2 held HALF_OPEN to the end (I1).
    ``test_leader_states.py::test_an_answer_to_one_agent_that_ends_the_leaders_state_is_pushed_to_all``
    shows the rule."""
    out = _replayed(60302)
    assert "seed 60302: ok" in out, out


def test_an_agent_moved_to_a_follower_cut_off_from_the_leader_stays_kept_aside() -> None:
    """Seed 900067 (40 s of faults): agent-1, leased through follower cp0.3, reconnected to
    cp1.4, which reached no leader; cp0.3 dropped it once cp1.4 listed it and split its whole
    7 units between its other agents (40 admitted in a 2 s window against 37.5). A follower
    keeps a departed agent aside until a replica the leader counts has it."""
    out = _replayed(900067, active=40)
    assert "seed 900067: ok" in out, out


def test_a_replica_linked_to_before_it_leads_tells_the_history_it_takes_since() -> None:
    """Seed 66030: etcd was wiped while away; followers cp0.3 and cp2.4 linked to cp1.4,
    restarted at the crashed leader's address, before it held a history token or led, and
    its snapshot said none. cp1.4 took the token c192c1… and then led, but a history
    change was said on the links only while leading, and taking the lead said nothing: the
    followers, which had found the loss, waited for ever for a leader saying that history
    to hand their restore over (I2: svc-b HALF_OPEN held, etcd CLOSED; I4: their agents'
    lease epochs above the leader's). A replica says a new history on its links whether it
    leads or not."""
    out = _replayed(66030)
    assert "seed 66030: ok" in out, out
