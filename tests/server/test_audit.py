"""Audit records against real etcd and real control-plane processes: who forced a breaker
and why, a change made with etcdctl, one record per change with two replicas watching, the
retention bound, and names that are likely typos refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.audit import AuditLog, Author, Change, Retention
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.server.test_cli import cli
from tests.server.test_control_plane_processes import trip
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, control_plane

POLICY = json.dumps({"service": "llm_provider", "timeout_secs": 7})


def audit(server: str, *args: str) -> list[dict[str, Any]]:
    result = cli("audit", "--json", *args, server=server)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def wait_for_records(server: str, match: Any, *args: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        found = [r for r in audit(server, *args) if match(r)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no such record: {audit(server)}"
        time.sleep(0.1)


def test_admin_force_and_etcdctl_put_are_recorded_with_their_identity(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    tokens = tmp_path / "admins"
    tokens.write_text("alice s3cret-alice\n")
    proc, server = control_plane(etcd_server.endpoint, prefix, "--admin-tokens-file", str(tokens))
    spawned.append(proc)
    forced = cli(
        "breakers", "force-open", "payments", "--create", "--reason", "INC-42 upstream down",
        "--token", "s3cret-alice", server=server,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    etcdctl(etcd_server.endpoint, "put", f"{prefix}/policies/llm_provider", POLICY)

    [force] = wait_for_records(server, lambda r: r["action"] == "breaker.forced_open")
    assert (force["identity"], force["name"], force["reason"]) == (
        "token:alice",
        "payments",
        "INC-42 upstream down",
    )
    assert json.loads(force["new_value"])["state"] == "BREAKER_STATE_FORCED_OPEN"
    [outside] = wait_for_records(server, lambda r: r["identity"] == "etcd", "--service", "llm_provider")
    assert (outside["action"], outside["kind"], outside["old_value"]) == ("etcd.put", "policy", "")
    assert outside["provenance"] == "verified"  # recorded by a control plane, not forged
    assert json.loads(outside["new_value"])["timeout_secs"] == 7
    stored = etcdctl(etcd_server.endpoint, "get", f"{prefix}/policies/llm_provider", "-w", "json")
    assert outside["revision"] == json.loads(stored)["kvs"][0]["mod_revision"]
    # the filters: by service, and by time
    assert {r["name"] for r in audit(server, "--service", "payments")} == {"payments"}
    assert audit(server, "--since", "2999-01-01T00:00:00") == []
    table = cli("audit", server=server).stdout
    assert "token:alice" in table and "INC-42 upstream down" in table and "etcd.put" in table


def test_forcing_needs_a_reason_and_an_unknown_name_needs_create(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    etcdctl(etcd_server.endpoint, "put", f"{prefix}/policies/payments", json.dumps({"service": "payments"}))
    deadline = time.monotonic() + 10
    while "payments" not in cli("policies", "list", server=server).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    unreasoned = cli("breakers", "force-open", "payments", server=server)
    assert unreasoned.returncode == 2 and "reason" in unreasoned.stderr
    typo = cli("breakers", "force-open", "paymnets", "--reason", "x", server=server)
    assert typo.returncode == 4, typo.stderr
    assert "payments" in typo.stderr and "create" in typo.stderr
    assert "paymnets" not in cli("breakers", "list", server=server).stdout
    named = cli("breakers", "force-open", "payments", "--reason", "drill", server=server)
    assert named.returncode == 0, named.stderr  # a policy names it: no --create needed
    created = cli("breakers", "force-open", "paymnets", "--reason", "x", "--create", server=server)
    assert created.returncode == 0, created.stderr
    assert cli("breakers", "reset", "payments", server=server).returncode == 0  # a reset needs no reason
    # a transition the rules decide is recorded as the control plane's, with the rule's reason
    trip(server, "payments", failures=5)
    deadline = time.monotonic() + 20
    while True:
        history = cli("breakers", "history", "payments", "--json", server=server)
        assert history.returncode == 0, history.stderr
        records = json.loads(history.stdout)
        if len(records) >= 3:
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.1)
    actions = [(r["action"], r["identity"]) for r in records]
    assert actions == [
        ("breaker.forced_open", "local"),
        ("breaker.reset", "local"),
        ("breaker.transition", "control-plane"),
    ]
    assert records[2]["reason"] == json.loads(records[2]["new_value"])["reason"] != ""
    # ... and with the value it replaced: the reset's CLOSED (it was "", and `audit` showed
    # "- -> OPEN" for every transition)
    assert records[2]["old_value"] == records[1]["new_value"] != ""
    assert json.loads(records[2]["old_value"])["state"] == "BREAKER_STATE_CLOSED"
    table = cli("breakers", "history", "payments", server=server).stdout
    assert "drill" in table and "OPEN" in table.splitlines()[-1]


def _stats(server: str) -> dict[str, Any]:
    result = cli("stats", "--json", server=server)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_two_replicas_make_one_record_of_an_outside_change(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    first, server = control_plane(etcd_server.endpoint, prefix, "--instance-id", "one")
    spawned.append(first)
    second, other = control_plane(etcd_server.endpoint, prefix, "--instance-id", "two")
    spawned.append(second)
    etcdctl(etcd_server.endpoint, "put", f"{prefix}/policies/llm_provider", POLICY)
    # a replica writes the record; another finds it written (and counts it only when it
    # lost the race to write it: one that compares after the record is in finds it recorded)
    deadline = time.monotonic() + 60
    while sum(_stats(a).get("outside_changes", 0) for a in (server, other)) < 1:
        assert time.monotonic() < deadline, (_stats(server), _stats(other))
        time.sleep(0.1)
    for address in (server, other):
        records = audit(address, "--service", "llm_provider")
        assert [(r["identity"], r["action"]) for r in records] == [("etcd", "etcd.put")]
    keys = etcdctl(etcd_server.endpoint, "get", f"{prefix}-audit/", "--prefix", "--keys-only").split()
    claim = f"{prefix}-audit/outside/policies/llm_provider"  # the change's revision, with it
    assert len(keys) == 2 and claim in keys, keys


async def kept(log: AuditLog) -> list[pb.AuditRecord]:
    """Every record kept, oldest first."""
    return (await log.page(size=1000, verify=False)).records[::-1]


async def test_retention_keeps_the_newest_records_within_count_and_age(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    now = [1_000_000.0]
    store = await EtcdStore([etcd_server.endpoint]).connect()
    log = AuditLog(store, prefix, "r1", Retention(max_records=5, max_age_secs=100), wall=lambda: now[0])
    try:
        for i in range(12):
            change = Change("policy", f"svc{i}", None, b"{}")
            await store.commit(log.record_writes([change], Author("token:alice"), "policy.put"))
            now[0] += 1
        assert await log.prune() == 7
        assert [r.name for r in await kept(log)] == [f"svc{i}" for i in range(7, 12)]
        now[0] += 97.5  # the first three kept (written at 7, 8, 9 s) are now older than 100 s
        assert await log.prune() == 3
        assert [r.name for r in await kept(log)] == ["svc10", "svc11"]
        # each kind has its own count bound: a flapping breaker keeps the policy changes
        for i in range(7):
            change = Change("breaker", f"b{i}", None, b"{}")
            await store.commit(log.record_writes([change], Author("control-plane"), "breaker.transition"))
            now[0] += 0.001  # kept newest first, by the time of the change
        assert await log.prune() == 2
        assert [(r.kind, r.name) for r in await kept(log)] == [
            ("policy", "svc10"),
            ("policy", "svc11"),
            *(("breaker", f"b{i}") for i in range(2, 7)),
        ]
    finally:
        await store.close()
