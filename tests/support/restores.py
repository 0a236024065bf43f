"""What the etcd backup-restore tests share (tests/server/test_restore_backup*.py): a real
etcd restored from a snapshot under a leader and a follower that reach it through pausable
links (tests.support.follower_write), the store's history token, and a breaker the operator
force-opened after the backup was taken."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl, write_history
from tests.support.fleets import put_policy
from tests.support.follower_write import POLICY, SERVICE, Link, do, held, linked_pair, set_state
from tests.support.polling import poll
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc

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


def token_stored(endpoint: str, prefix: str) -> None:
    """Wait until the store's history token is in etcd (a backup taken then holds it)."""
    token_key = f"{prefix}/store-history"
    poll(lambda: etcdctl(endpoint, "get", token_key, "--print-value-only").strip() != "", 30)


def restore_unseen(etcd: EtcdProcess, snap: Path, links: tuple[Link, Link], past: int) -> int:
    """Restore ``snap`` with both links paused and write etcd on to revision ``past`` before
    they flow again (each cut first: the replicas reconnect), so that no replica sees a
    revision go back. Returns the revision the restore left."""
    lead_link, follow_link = links
    do(lead_link, "pause")
    do(follow_link, "pause")
    restore(etcd, snap)
    restored = revision(etcd.endpoint)
    write_history(etcd.endpoint, "/elsewhere/x", past - restored)
    do(lead_link, "cut", "resume")
    do(follow_link, "cut", "resume")
    return restored


def force_open_after_backup(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], links: tuple[Link, Link], snap: Path, upstream: str
) -> tuple[str, str, Proc, Proc]:
    """Leader and follower, the policy stored, a backup taken, then a new breaker
    force-opened through the leader and held by both and by the agent on the follower.
    Returns (the leader's address, the follower's, the leader, the agent)."""
    endpoint = etcd.endpoint
    (leader, lead_at), (_, follow_at) = linked_pair(endpoint, prefix, spawned, links)
    put_policy(lead_at, POLICY)
    token_stored(endpoint, prefix)
    etcdctl(endpoint, "snapshot", "save", str(snap))
    written = set_state(lead_at, pb.BREAKER_STATE_FORCED_OPEN)
    poll(lambda: held(follow_at).revision == written.revision == held(lead_at).revision, 30)
    (agent,) = start_probers(spawned, ["agent"], follow_at, upstream, SERVICE, 1)
    poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)
    return lead_at, follow_at, leader, agent
