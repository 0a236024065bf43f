"""etcd restored from a backup (``etcdctl snapshot restore``, the same cluster id) taken
before an operator force-opened a breaker the backup does not hold, with real processes: a
real etcd, two control planes each reaching it through a TCP proxy of its own, one agent
process on the follower calling a real upstream. The backup holds the history token both
replicas hold, so the token alone cannot tell the loss (see ``server/held_keys.py``).

- both links paused over the restore, and etcd written 50 revisions past before they
  resume: no replica sees a revision go back. The leader's check of the keys it holds finds
  the breaker's key absent from the store's history and writes the force-open back. Before:
  etcd held no breaker for good, a replica started later held CLOSED (4 of 4 runs).
- the links left flowing: the follower sees the revision go back and stores a new token at
  a revision the leader's resumed watch is already past. The leader reads the token on its
  health ping (or finds the key absent) and writes the force-open back, so after the
  leader is killed the follower leads with the force-open and its agent keeps refusing.
  Before: 5 of 7 runs left etcd without it, and the agent went back to CLOSED after the
  failover in 3."""

from __future__ import annotations

from pathlib import Path

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleets import leader_of
from tests.support.follower_write import Link, held, links
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.procs import Proc, control_plane
from tests.support.restores import (
    RESTORED_WITHIN,
    force_open_after_backup,
    forced_open_stored,
    restore,
    restore_unseen,
    revision,
)

__all__ = ["links"]  # (the fixture)


@pytest.mark.timeout(300)
def test_a_backup_restored_while_the_replicas_were_cut_off_gets_the_force_open_back(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], tmp_path: Path
) -> None:
    endpoint = etcd.endpoint
    with ProbeUpstream(0.05) as upstream:
        lead_at, follow_at, _, agent = force_open_after_backup(
            etcd, prefix, spawned, links, tmp_path / "snap.db", upstream.address
        )
        before = revision(endpoint)
        assert restore_unseen(etcd, tmp_path / "snap.db", links, before + 50) < before

        poll(lambda: forced_open_stored(endpoint, prefix), RESTORED_WITHIN)
        late, late_at = control_plane(endpoint, prefix, "--instance-id", "late")
        spawned.append(late)
        poll(lambda: held(late_at).state == pb.BREAKER_STATE_FORCED_OPEN, 60)
        poll(lambda: held(follow_at).state == held(lead_at).state == pb.BREAKER_STATE_FORCED_OPEN, 30)
        poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)


@pytest.mark.timeout(300)
def test_a_backup_restored_under_connected_replicas_gets_the_force_open_back_and_keeps_it_over_a_failover(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], tmp_path: Path
) -> None:
    endpoint = etcd.endpoint
    with ProbeUpstream(0.05) as upstream:
        lead_at, follow_at, leader, agent = force_open_after_backup(
            etcd, prefix, spawned, links, tmp_path / "snap.db", upstream.address
        )
        restore(etcd, tmp_path / "snap.db")

        poll(lambda: forced_open_stored(endpoint, prefix), RESTORED_WITHIN)
        poll(lambda: held(follow_at).state == held(lead_at).state == pb.BREAKER_STATE_FORCED_OPEN, 30)
        leader.kill()
        poll(lambda: leader_of(endpoint, prefix) == "follow", 60)
        poll(
            lambda: (
                held(follow_at).state == pb.BREAKER_STATE_FORCED_OPEN and forced_open_stored(endpoint, prefix)
            ),
            30,
        )
        poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)
