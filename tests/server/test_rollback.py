"""History and rollback against real etcd and real processes: a rolled-back policy reaches
a running agent, a change made meanwhile makes the rollback fail cleanly (exit 6, nothing
written), and a config import is undone as a whole."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_cli import cli, plane  # noqa: F401  (the fixture)
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, agent, control_plane, python


def _import(server: str, path: Path, text: str, *extra: str) -> int:
    path.write_text(text)
    result = cli("config", "import", str(path), "--json", *extra, server=server)
    assert result.returncode == 0, result.stderr
    return _revision(server, "llm_provider")


def _revision(server: str, name: str) -> int:
    result = cli("policies", "get", name, "--json", server=server)
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout).get("revision", 0))


def _stored(etcd: str, key: str) -> dict[str, object]:
    return json.loads(etcdctl(etcd, "get", key, "--print-value-only"))  # type: ignore[no-any-return]


def _wait_policy(a: Proc, timeout_secs: float) -> None:
    deadline = time.monotonic() + 15
    while a.ask("policy")["timeout_secs"] != timeout_secs:
        assert time.monotonic() < deadline, f"the agent never got timeout_secs {timeout_secs}"
        time.sleep(0.05)


def test_rollback_reaches_a_running_agent_and_a_concurrent_change_refuses_it(
    plane: str,  # noqa: F811
    spawned: list[Proc],
    tmp_path: Path,
    etcd_server: EtcdProcess,
    prefix: str,
) -> None:
    upstream_proc = python("tests.support.upstream", "llm")
    spawned.append(upstream_proc)
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    toml = tmp_path / "policy.toml"
    first = _import(
        plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 5\n", "--reason", "baseline"
    )
    a = agent("agent-a", plane, upstream, "llm_provider")
    spawned.append(a)
    _wait_policy(a, 5)
    second = _import(
        plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 0.2\n", "--reason", "tighter"
    )
    _wait_policy(a, 0.2)

    history = cli("policies", "history", "llm_provider", "--json", server=plane)
    assert history.returncode == 0, history.stderr
    versions = [(v["revision"], v["identity"], v["reason"]) for v in json.loads(history.stdout)]
    assert versions == [(first, "local", "baseline"), (second, "local", "tighter")]
    diff = cli("policies", "diff", "llm_provider", str(first), str(second), server=plane)
    assert diff.stdout.strip() == "timeout_secs: 5.0 -> 0.2", diff.stdout + diff.stderr

    back = cli("policies", "rollback", "llm_provider", "--reason", "too tight", server=plane)
    assert back.returncode == 0, back.stderr
    _wait_policy(a, 5)  # the running agent enforces the restored version
    key = f"{prefix}/policies/llm_provider"
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 5
    restored = _revision(plane, "llm_provider")
    [record] = [r for r in _audit(plane) if r["action"] == "policy.rollback"]
    assert record["reason"] == f"too tight (back to revision {first})" and record["revision"] == restored

    # someone changes it between reading the revision and the rollback: nothing is written
    etcdctl(etcd_server.endpoint, "put", key, json.dumps({"service": "llm_provider", "timeout_secs": 9}))
    stale = cli(
        "policies", "rollback", "llm_provider", "--to", str(second), "--if-revision", str(restored),
        server=plane,
    )  # fmt: skip
    assert stale.returncode == 6, stale.stderr
    assert "changed since revision" in stale.stderr
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 9
    _wait_policy(a, 9)
    assert not [r for r in _audit(plane) if r["action"] == "policy.rollback" and r["revision"] > restored]


def _audit(server: str) -> list[dict[str, object]]:
    result = cli("audit", "--json", server=server)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _two(llm: float, storage: float) -> str:
    return (
        f"[service_specific.llm_provider]\ntimeout_secs = {llm}\n"
        f"[service_specific.storage_backend]\ntimeout_secs = {storage}\n"
    )


def test_a_config_import_is_rolled_back_as_a_whole(
    plane: str,  # noqa: F811
    tmp_path: Path,
    etcd_server: EtcdProcess,
    prefix: str,
) -> None:
    toml = tmp_path / "config.toml"
    _import(plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 5\n")
    _import(
        plane,
        toml,
        _two(7, 3),
    )
    undone = cli("config", "rollback", "--reason", "bad import", "--json", server=plane)
    assert undone.returncode == 0, undone.stderr
    changes = {c["service"]: c["action"] for c in json.loads(undone.stdout)["changes"]}
    assert changes == {"llm_provider": "changed", "storage_backend": "removed"}
    assert _stored(etcd_server.endpoint, f"{prefix}/policies/llm_provider")["timeout_secs"] == 5
    assert etcdctl(etcd_server.endpoint, "get", f"{prefix}/policies/storage_backend") == ""
    revisions = {r["revision"] for r in _audit(plane) if r["action"] == "config.rollback"}
    assert len(revisions) == 1  # one transaction

    # an import whose policies changed since cannot be undone: nothing is written
    at = _import(
        plane,
        toml,
        _two(8, 4),
    )
    key = f"{prefix}/policies/storage_backend"
    etcdctl(etcd_server.endpoint, "put", key, json.dumps({"service": "storage_backend", "timeout_secs": 6}))
    refused = cli("config", "rollback", "--to", str(at), server=plane)
    assert refused.returncode == 6, refused.stderr
    assert "storage_backend" in refused.stderr
    assert _stored(etcd_server.endpoint, f"{prefix}/policies/llm_provider")["timeout_secs"] == 8


def test_a_config_import_is_rolled_back_whole_after_its_policy_records_were_pruned(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix, "--audit-max-records", "2")
    spawned.append(proc)
    toml = tmp_path / "config.toml"
    _import(server, toml, _two(7, 3))
    for timeout_secs in (1, 2, 3):  # three more policy records: the bound is passed
        _import(server, toml, f"[service_specific.agent_communication]\ntimeout_secs = {timeout_secs}\n")
    # The prune keeps the record each present key's mark names (its last good value, see
    # server/audit_kept.py): the import's two go as an earlier version pruned them.
    records = f"{prefix}-audit/policy/"
    found = json.loads(etcdctl(etcd_server.endpoint, "get", records, "--prefix", "-w", "json"))
    for kv in found.get("kvs", []):
        if json.loads(base64.b64decode(kv["value"]))["name"] != "agent_communication":
            etcdctl(etcd_server.endpoint, "del", base64.b64decode(kv["key"]).decode())
    deadline = time.monotonic() + 30
    while {r["name"] for r in _audit(server) if r["kind"] == "policy"} != {"agent_communication"}:
        assert time.monotonic() < deadline, _audit(server)
        time.sleep(0.2)
    undone = cli(
        "config", "rollback", "--to", str(_first_import(server, etcd_server, prefix)), "--json", server=server
    )
    assert undone.returncode == 0, undone.stderr
    changes = {c["service"]: c["action"] for c in json.loads(undone.stdout)["changes"]}
    assert changes == {"llm_provider": "removed", "storage_backend": "removed"}
    for name in ("llm_provider", "storage_backend"):
        assert etcdctl(etcd_server.endpoint, "get", f"{prefix}/policies/{name}") == ""


def _first_import(server: str, etcd: EtcdProcess, prefix: str) -> int:
    """The revision of the import of llm_provider and storage_backend (both still as it left them)."""
    out = json.loads(etcdctl(etcd.endpoint, "get", f"{prefix}/policies/storage_backend", "-w", "json"))
    return int(out["kvs"][0]["mod_revision"])


def test_two_operators_undoing_the_same_change_do_not_cancel_out(
    plane: str,  # noqa: F811
    tmp_path: Path,
    etcd_server: EtcdProcess,
    prefix: str,
) -> None:
    toml = tmp_path / "policy.toml"
    first = _import(plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 5\n", "--reason", "a")
    second = _import(plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 7\n", "--reason", "b")
    key = f"{prefix}/policies/llm_provider"
    a = cli("policies", "rollback", "llm_provider", "--reason", "A", server=plane)
    assert a.returncode == 0, a.stderr
    undone = _revision(plane, "llm_provider")
    # the second operator saw the same change to undo: the last change is now A's rollback
    b = cli("policies", "rollback", "llm_provider", "--reason", "B", server=plane)
    assert b.returncode == 6, b.stderr
    assert f"is a rollback by local; to undo it say so: --if-revision {undone}" in b.stderr
    # back to a revision with two changes after it: which one the operator saw is unknown
    d = cli("policies", "rollback", "llm_provider", "--to", str(first), server=plane)
    assert d.returncode == 6 and "changed 2 times since revision" in d.stderr, d.stderr
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 5
    # named: the operator means it
    e = cli("policies", "rollback", "llm_provider", "--to", str(second), "--if-revision",
            str(_revision(plane, "llm_provider")), server=plane)  # fmt: skip
    assert e.returncode == 0, e.stderr
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 7
    for bad in ("99999999", "-5"):
        refused = cli("policies", "rollback", "llm_provider", "--to", bad, server=plane)
        assert refused.returncode == 2, (bad, refused.stderr)
        assert "to_revision" in refused.stderr
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 7


def test_a_policy_rollback_after_a_config_rollback_is_refused_as_a_rollback(
    plane: str,  # noqa: F811
    tmp_path: Path,
    etcd_server: EtcdProcess,
    prefix: str,
) -> None:
    toml = tmp_path / "config.toml"
    _import(plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 5\n", "--reason", "i1")
    _import(plane, toml, "[service_specific.llm_provider]\ntimeout_secs = 7\n", "--reason", "i2")
    undone = cli("config", "rollback", "--reason", "undo i2", server=plane)
    assert undone.returncode == 0, undone.stderr
    key = f"{prefix}/policies/llm_provider"
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 5
    # a second operator undoing "the last change" would bring i2 back: refused, nothing written
    second = cli("policies", "rollback", "llm_provider", "--reason", "second operator", server=plane)
    assert second.returncode == 6, second.stderr
    assert "is a rollback by" in second.stderr
    assert _stored(etcd_server.endpoint, key)["timeout_secs"] == 5
