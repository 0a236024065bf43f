"""Shadow mode's writes are audited with who made them and why, and a promote is a
compare-and-swap even when the service had no enforced policy (real etcd; a control plane
process for the CLI and its identities, one in this process for the race)."""

from __future__ import annotations

import json
from pathlib import Path

from mission_control.client.policy import ServicePolicy
from mission_control.server.audit import Author
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.shadow_ops import promote_candidate, put_candidate
from mission_control.server.store import EtcdStore

from tests.server.test_cli import cli
from tests.support.procs import Proc, control_plane

SERVICE = "fresh_service"


async def test_promote_refuses_a_policy_created_meanwhile_when_none_was_enforced(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    plane = ControlPlane(store, prefix=prefix, instance_id="me")  # not watching: the race, held open
    try:
        await put_candidate(plane, ServicePolicy(SERVICE, timeout_secs=3), Author("token:alice", "try it"))
        await store.put(
            plane.policies.key(SERVICE), json.dumps({"service": SERVICE, "timeout_secs": 9}).encode()
        )
        assert await promote_candidate(plane, SERVICE, 0, Author("token:alice", "go")) is None
        stored = await store.get(plane.policies.key(SERVICE))
        assert stored is not None and json.loads(stored.value)["timeout_secs"] == 9  # not overwritten
        assert plane.shadows.stored(SERVICE) is not None  # the candidate stays
    finally:
        await store.close()


def test_shadow_writes_and_promote_are_recorded_with_the_caller_and_reason(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    tokens = tmp_path / "admins"
    tokens.write_text("alice s3cret-alice\n")
    proc, server = control_plane(etcd_server.endpoint, prefix, "--admin-tokens-file", str(tokens))
    spawned.append(proc)
    auth = ("--token", "s3cret-alice")
    candidate = json.dumps({"timeout_secs": 4})
    put = cli("policies", "shadow", SERVICE, candidate, "--reason", "trial A", *auth, server=server)
    assert put.returncode == 0, put.stderr
    unreasoned = cli("policies", "promote", SERVICE, *auth, server=server)
    assert unreasoned.returncode == 2 and "reason" in unreasoned.stderr
    promoted = cli("policies", "promote", SERVICE, "--reason", "trial A held", *auth, server=server)
    assert promoted.returncode == 0, promoted.stderr
    again = cli("policies", "shadow", SERVICE, candidate, "--reason", "trial B", *auth, server=server)
    assert again.returncode == 0, again.stderr
    cleared = cli("policies", "shadow", SERVICE, "--clear", "--reason", "not needed", *auth, server=server)
    assert cleared.returncode == 0, cleared.stderr
    shown = cli("audit", "--service", SERVICE, "--json", server=server)
    assert shown.returncode == 0, shown.stderr
    done = [(r["kind"], r["action"], r["identity"], r["reason"]) for r in json.loads(shown.stdout)][::-1]
    assert done == [
        ("shadow", "shadow.put", "token:alice", "trial A"),
        ("policy", "shadow.promote", "token:alice", "trial A held"),
        ("shadow", "shadow.clear", "token:alice", "trial A held"),
        ("shadow", "shadow.put", "token:alice", "trial B"),
        ("shadow", "shadow.clear", "token:alice", "not needed"),
    ]
