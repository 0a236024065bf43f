"""The roster after etcd lost its data (stopped, started empty on the same address): every
replica reads the roster again and follows the new store, re-publishes its own agents, and a
replica that dies afterwards leaves the others' pages when its new lease runs out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_dashboard_browser import start_plane
from tests.server.test_dashboard_replicas import agents, state, until
from tests.support.etcd import etcdctl, write_history
from tests.support.procs import Proc, python


def test_the_roster_follows_an_etcd_wiped_and_restarted_empty(
    etcd: EtcdProcess, prefix: str, tmp_path: Path, spawned: list[Proc]
) -> None:
    a = start_plane(etcd, prefix, tmp_path, spawned, "--instance-id", "rep-a")
    b = start_plane(etcd, prefix, tmp_path, spawned, "--instance-id", "rep-b")
    crowd = python("tests.support.many_agents", b.address, "1", "agent-b")
    spawned.append(crowd)
    assert json.loads(crowd.wait_for('{"connected"', timeout=60)) == {"connected": 1}
    until(lambda: agents(state(a)) == {"agent-b-0000": ("rep-b", False)})
    write_history(etcd.endpoint, f"{prefix}/history", 500)

    etcd.stop()
    shutil.rmtree(etcd.data_dir)
    etcd.start()  # same address, no data

    roster = f"{prefix}/fleet-agents/"
    until(lambda: f"{roster}rep-b/0" in etcdctl(etcd.endpoint, "get", "--prefix", "--keys-only", roster))
    lease = etcdctl(etcd.endpoint, "lease", "grant", "300").split()[1]
    shard = '{"replica":"rep-z","shard":0,"omitted":0,"agents":[{"id":"agent-z"}]}'
    etcdctl(etcd.endpoint, "put", f"--lease={lease}", f"{roster}rep-z/0", shard)
    fleet = {"agent-b-0000": ("rep-b", False), "agent-z": ("rep-z", False)}
    until(lambda: agents(state(a)) == fleet)  # the new store's values, followed

    b.proc.kill()  # SIGKILL after the wipe: its new lease runs out
    until(lambda: agents(state(a)) == {"agent-z": ("rep-z", False)})
