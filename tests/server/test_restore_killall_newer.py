"""etcd restored from a backup while every replica was killed (real processes: a real etcd,
two control planes, one agent process on the follower). The backup holds a force-open an
operator reset afterwards; the replicas started after the restore hold nothing newer and
take it, forced open again (README, "restore while one replica runs"). The agent still
holds the reset, a newer generation, and says so in its hello: the replica it reconnects
to logs it and records ``restore.agent_newer`` in the audit. Before: nothing said it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.held_newer import AGENT_NEWER

from tests.server.test_restore_backup import restore
from tests.support.etcd import etcdctl
from tests.support.fleets import leader_of, put_policy
from tests.support.follower_write import POLICY, SERVICE, held, set_state
from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import start_probers, stored
from tests.support.procs import Proc, control_plane


def newer_records(endpoint: str, prefix: str) -> list[dict]:  # type: ignore[type-arg]
    out = etcdctl(endpoint, "get", f"{prefix}-audit/", "--prefix", "--print-value-only")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("action") == AGENT_NEWER]


@pytest.mark.timeout(300)
def test_an_agent_holding_a_reset_the_restored_store_lacks_is_said_after_a_restore_with_every_replica_killed(
    etcd: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    endpoint = etcd.endpoint
    with ProbeUpstream(0.05) as upstream:
        lead, lead_at = control_plane(endpoint, prefix, "--instance-id", "lead")
        spawned.append(lead)
        poll(lambda: leader_of(endpoint, prefix) == "lead", 60)
        follow, follow_at = control_plane(endpoint, prefix, "--instance-id", "follow")
        spawned.append(follow)
        put_policy(lead_at, POLICY)
        (agent,) = start_probers(spawned, ["agent"], follow_at, upstream.address, SERVICE, 1)
        forced = set_state(lead_at, pb.BREAKER_STATE_FORCED_OPEN)
        poll(lambda: agent.ask("state")["state"] == "FORCED_OPEN", 30)
        poll(lambda: held(follow_at).generation == forced.generation, 30)
        etcdctl(endpoint, "snapshot", "save", str(tmp_path / "snap.db"))
        reset = set_state(lead_at, pb.BREAKER_STATE_CLOSED)
        assert reset.generation > forced.generation
        poll(lambda: agent.ask("state")["state"] == "CLOSED", 30)
        lead.kill()
        follow.kill()
        restore(etcd, tmp_path / "snap.db")
        assert str(stored(endpoint, prefix, SERVICE).get("state", "")).endswith("FORCED_OPEN")
        for name, address in (("lead2", lead_at), ("follow2", follow_at)):
            proc, _ = control_plane(endpoint, prefix, "--instance-id", name, "--listen", address)
            spawned.append(proc)

        (record,) = poll(lambda: newer_records(endpoint, prefix), 60)
        assert record["name"] == SERVICE
        said = json.loads(record["old_value"])
        assert int(said["generation"]) == reset.generation
        assert said["agent"].startswith("agent")
