"""etcd restored from a backup that already holds the breaker and the policy, taken before
an operator force-opened the breaker, edited the policy's timeout (3 -> 7), put a candidate
policy and deleted another policy. Real processes: a real etcd, a leader and a follower each
through a TCP proxy of its own, both links paused over the restore and etcd written 50
revisions past (no replica sees a revision go back), then a replica started after it all.

- the breaker: the backup's record (CLOSED, a lower generation) is written over with the
  force-open the leader held; every replica holds FORCED_OPEN. Before: all held CLOSED.
- the policy: etcd's (the backup's) value is in force on every replica, and the audit says
  what the restore took back (``restore.reverted``, 7 -> 3). Before: silent.
- the candidate put after the backup is gone from every replica, as from etcd; the policy
  deleted after it is back in force on every replica, as in etcd. Before: the leader and the
  follower kept the candidate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.fleets import put_policy
from tests.support.follower_write import POLICY, SERVICE, Link, held, linked_pair, links, set_state
from tests.support.polling import poll
from tests.support.probers import stored
from tests.support.procs import Proc, control_plane
from tests.support.restored_views import (
    audit,
    candidates,
    delete_policy,
    put_candidate,
    services,
    with_timeout,
)
from tests.support.restores import forced_open_stored, restore_unseen, revision, token_stored

__all__ = ["links"]  # (the fixture)

RETIRED = "retired"


def stored_timeout(endpoint: str, prefix: str) -> float:
    text = etcdctl(endpoint, "get", f"{prefix}/policies/{SERVICE}", "--print-value-only").strip()
    return float(json.loads(text)["timeout_secs"])


@pytest.mark.timeout(300)
def test_a_backup_holding_older_state_gives_back_the_fleet_state_and_says_what_it_undid(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], tmp_path: Path
) -> None:
    endpoint = etcd.endpoint
    (_, lead_at), (_, follow_at) = linked_pair(endpoint, prefix, spawned, links)
    put_policy(lead_at, POLICY)
    put_policy(lead_at, with_timeout(2.0, RETIRED))
    set_state(lead_at, pb.BREAKER_STATE_CLOSED)  # the backup holds the breaker, CLOSED
    poll(lambda: stored(endpoint, prefix, SERVICE) != {}, 30)
    token_stored(endpoint, prefix)
    snap = tmp_path / "snap.db"
    etcdctl(endpoint, "snapshot", "save", str(snap))

    written = set_state(lead_at, pb.BREAKER_STATE_FORCED_OPEN)
    put_policy(lead_at, with_timeout(7.0))
    put_candidate(lead_at, with_timeout(11.0))
    delete_policy(lead_at, RETIRED)
    poll(lambda: held(follow_at).revision >= written.revision, 30)
    poll(lambda: services(follow_at) == {SERVICE: 7.0} and candidates(follow_at) == {SERVICE: 11.0}, 30)

    restore_unseen(etcd, snap, links, revision(endpoint) + 50)

    poll(lambda: forced_open_stored(endpoint, prefix), 60)
    assert stored_timeout(endpoint, prefix) == 3.0  # etcd's value (the backup's) is taken
    in_etcd = {SERVICE: 3.0, RETIRED: 2.0}
    late, late_at = control_plane(endpoint, prefix, "--instance-id", "late")
    spawned.append(late)
    for address in (lead_at, follow_at, late_at):
        poll(lambda a=address: held(a).state == pb.BREAKER_STATE_FORCED_OPEN, 60)  # type: ignore[misc]
        poll(lambda a=address: services(a) == in_etcd and candidates(a) == {}, 60)  # type: ignore[misc]
    reverted = [r for r in audit(lead_at, SERVICE) if r.action == "restore.reverted"]
    assert len(reverted) == 1, reverted
    assert json.loads(reverted[0].old_value)["timeout_secs"] == 7.0
    assert json.loads(reverted[0].new_value)["timeout_secs"] == 3.0


@pytest.mark.timeout(300)
def test_a_backup_restored_after_a_candidate_was_put_and_a_policy_deleted_is_followed_by_every_replica(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], tmp_path: Path
) -> None:
    """No breaker changed after the backup: only the candidate (held, absent from etcd) and
    the deleted policy (not held, back in etcd) tell the loss."""
    endpoint = etcd.endpoint
    (_, lead_at), (_, follow_at) = linked_pair(endpoint, prefix, spawned, links)
    put_policy(lead_at, POLICY)
    put_policy(lead_at, with_timeout(2.0, RETIRED))
    token_stored(endpoint, prefix)
    snap = tmp_path / "snap.db"
    etcdctl(endpoint, "snapshot", "save", str(snap))

    put_candidate(lead_at, with_timeout(11.0))
    delete_policy(lead_at, RETIRED)
    poll(lambda: services(follow_at) == {SERVICE: 3.0} and candidates(follow_at) == {SERVICE: 11.0}, 30)

    restore_unseen(etcd, snap, links, revision(endpoint) + 50)

    in_etcd = {SERVICE: 3.0, RETIRED: 2.0}
    late, late_at = control_plane(endpoint, prefix, "--instance-id", "late")
    spawned.append(late)
    for address in (lead_at, follow_at, late_at):
        poll(lambda a=address: services(a) == in_etcd and candidates(a) == {}, 60)  # type: ignore[misc]
    assert etcdctl(endpoint, "get", "--prefix", f"{prefix}/shadow/", "--keys-only").strip() == ""
    poll(lambda: any(r.action == "restore.reverted" for r in audit(lead_at, RETIRED)), 30)
