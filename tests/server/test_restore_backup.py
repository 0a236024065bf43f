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

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl, write_history
from tests.support.fleets import leader_of, put_policy
from tests.support.follower_write import POLICY, SERVICE, Link, do, held, links, set_state
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane

__all__ = ["links"]  # (the fixture)

#: Seconds within which the force-open is back in etcd: the leader's check runs every 5 s.
RESTORED_WITHIN = 60


def forced_open_stored(endpoint: str, prefix: str) -> bool:
    return str(stored(endpoint, prefix, SERVICE).get("state", "")).endswith("FORCED_OPEN")


def restore(etcd: EtcdProcess, snap: Path) -> None:
    """Stop etcd, wipe its data dir and start it again from the backup ``snap``."""
    etcd.stop()
    shutil.rmtree(etcd.data_dir)
    peer = f"http://127.0.0.1:{etcd.peer_port}"
    command = ["etcdctl", "snapshot", "restore", str(snap), "--name", etcd.name]
    command += ["--data-dir", str(etcd.data_dir), "--initial-cluster", f"{etcd.name}={peer}"]
    command += ["--initial-advertise-peer-urls", peer]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    etcd.start()


def revision(endpoint: str) -> int:
    return int(json.loads(etcdctl(endpoint, "get", "x", "-w", "json"))["header"]["revision"])


def force_open_after_backup(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], snap: Path, upstream: str
) -> tuple[str, str, Proc, Proc]:
    """Leader and follower, the policy stored, a backup taken, then a new breaker
    force-opened through the leader and held by both and by the agent on the follower.
    Returns (the leader's address, the follower's, the leader, the agent)."""
    endpoint = etcd.endpoint
    lead_link, follow_link = links
    lead_link[0].target = follow_link[0].target = endpoint
    leader, lead_at = control_plane(lead_link[0].address, prefix, "--instance-id", "lead")
    spawned.append(leader)
    poll(lambda: leader_of(endpoint, prefix) == "lead", 60)
    follower, follow_at = control_plane(follow_link[0].address, prefix, "--instance-id", "follow")
    spawned.append(follower)
    put_policy(lead_at, POLICY)
    token_key = f"{prefix}/store-history"
    poll(lambda: etcdctl(endpoint, "get", token_key, "--print-value-only").strip() != "", 30)
    etcdctl(endpoint, "snapshot", "save", str(snap))
    written = set_state(lead_at, pb.BREAKER_STATE_FORCED_OPEN)
    poll(lambda: held(follow_at).revision == written.revision == held(lead_at).revision, 30)
    (agent,) = start_probers(spawned, ["agent"], follow_at, upstream, SERVICE, 1)
    poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)
    return lead_at, follow_at, leader, agent


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
        lead_link, follow_link = links
        do(lead_link, "pause")
        do(follow_link, "pause")
        restore(etcd, tmp_path / "snap.db")
        assert revision(endpoint) < before
        write_history(endpoint, "/elsewhere/x", before + 50)
        do(lead_link, "cut", "resume")
        do(follow_link, "cut", "resume")

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
