"""etcd restored from a backup while its leader dies: the backup holds the leader's key
(and its lease, restored with a fresh TTL), so the follower that finds the loss sees the
dead leader named for a few seconds. Real processes: a real etcd, two control planes, one
agent process on the follower. The follower keeps what it holds (an operator's force-open
the backup lacks) until a leader alive that has seen the loss takes the restore over, or
it leads itself and writes it back. Before: it handed the restore to the dead leader,
reloaded, and the force-open was lost for good (4 of 5 runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleets import leader_of
from tests.support.follower_write import Link, held, links
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.procs import Proc
from tests.support.restores import RESTORED_WITHIN, force_open_after_backup, forced_open_stored, restore

__all__ = ["links"]  # (the fixture)


@pytest.mark.timeout(300)
def test_the_leader_killed_while_etcd_is_restored_leaves_the_force_open_to_the_follower(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], tmp_path: Path
) -> None:
    endpoint = etcd.endpoint
    with ProbeUpstream(0.05) as upstream:
        _, follow_at, leader, agent = force_open_after_backup(
            etcd, prefix, spawned, links, tmp_path / "snap.db", upstream.address
        )
        etcd.stop()
        leader.kill()
        restore(etcd, tmp_path / "snap.db")

        poll(lambda: leader_of(endpoint, prefix) == "follow", 60)
        poll(lambda: forced_open_stored(endpoint, prefix), RESTORED_WITHIN)
        poll(lambda: held(follow_at).state == pb.BREAKER_STATE_FORCED_OPEN, 30)
        poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)
