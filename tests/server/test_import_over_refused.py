"""A value `etcdctl put` wrote that the control plane refused (the last good policy stays in
force) against a real etcd, a control-plane process and the CLI: a `config import` replaces
it — an operator fixing a bad put by importing is the fix path —, and the history shows it
as refused, never as applied."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_cli import cli
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "storage_backend"
SEED = "[service_specific.storage_backend]\ntimeout_secs = 10\nmax_retries = 2\n"
CHANGED = "[service_specific.storage_backend]\ntimeout_secs = 7\nmax_retries = 2\n"
BAD_PUTS = (
    {"service": SERVICE, "timeout_secs": -3},
    {"service": SERVICE, "recovery_check": {"target": "no-port"}},
)


@pytest.fixture
def served(etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]) -> Iterator[tuple[str, Any]]:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    with grpc.insecure_channel(server) as channel:
        yield server, pb_grpc.ControlPlaneServiceStub(channel)


def _import(server: str, path: Path) -> str:
    result = cli("config", "import", str(path), server=server)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def _refused_put(etcd: str, key: str, stub: Any, bad: dict[str, Any]) -> None:
    def failed() -> int:
        stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=30)
        return int(stats.statistics.config_reloads_failed)

    before = failed()
    etcdctl(etcd, "put", key, json.dumps(bad))
    poll(lambda: failed() > before)
    in_force = stub.GetPolicy(pb.GetPolicyRequest(service=SERVICE), timeout=30).policy
    assert in_force.timeout_secs == 10  # the last good value


def _stored_timeout(etcd: str, key: str) -> Any:
    return json.loads(etcdctl(etcd, "get", key, "--print-value-only")).get("timeout_secs")


def test_an_import_replaces_a_refused_put_and_history_says_refused(
    etcd_server: EtcdProcess, prefix: str, served: tuple[str, Any], tmp_path: Path
) -> None:
    server, stub = served
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    (tmp_path / "seed.toml").write_text(SEED)
    (tmp_path / "changed.toml").write_text(CHANGED)
    _import(server, tmp_path / "seed.toml")
    seed = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=10, max_retries=2)
    for bad in BAD_PUTS:
        _refused_put(etcd, key, stub, bad)
        # the very policy in force: the refused value etcd holds is replaced all the same
        out = _import(server, tmp_path / "seed.toml")
        assert "(changed)" in out and "refused" in out, out
        assert _stored_timeout(etcd, key) == 10
        _refused_put(etcd, key, stub, bad)
        out = _import(server, tmp_path / "changed.toml")  # was: exit 6 "try again", for ever
        assert "timeout_secs: 10.0 -> 7.0" in out, out
        assert _stored_timeout(etcd, key) == 7
        stub.PutPolicy(pb.PutPolicyRequest(policy=seed), timeout=30)

    def history() -> list[pb.AuditRecord]:
        request = pb.ListPolicyHistoryRequest(service=SERVICE)
        return list(stub.ListPolicyHistory(request, timeout=30).versions)

    def refused() -> list[pb.AuditRecord]:
        return [v for v in history() if v.action == "etcd.refused"]

    records = poll(lambda: refused() if len(refused()) == 4 else [])
    assert not [v for v in history() if v.identity == "etcd" and v.action != "etcd.refused"]
    assert [json.loads(r.new_value).get("timeout_secs") for r in records] == [-3, -3, None, None]
    table = cli("policies", "history", SERVICE, server=server).stdout
    lines = [line for line in table.splitlines() if "etcd.refused" in line]
    assert len(lines) == 4 and all("REFUSED, not in force: " in line for line in lines), table
    assert all("timeout_secs: 10.0 -> -3" in line for line in lines[:2]), table
