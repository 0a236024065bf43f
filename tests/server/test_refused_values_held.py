"""Refused values against a real etcd, control-plane processes and the CLI: `stats` tells
the refused values etcd still holds from those replaced since, `policies get` names the
revision in force and says a newer value was refused, and the last good policy survives a
restart also when etcd compacted its revisions (read back from the audit records)."""

from __future__ import annotations

import json
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
HELD = "(etcd holds it now)"
REPLACED = "(replaced since: no longer in etcd)"


def _run(server: str, *args: str) -> str:
    result = cli(*args, server=server)
    assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
    return result.stdout


def _stats(stub: Any) -> pb.ErrorStatistics:
    return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=30).statistics


def _refused_put(etcd: str, key: str, stub: Any, value: str) -> int:
    """Put ``value`` with etcdctl, wait until it is refused; returns its revision."""
    before = _stats(stub).config_reloads_failed
    etcdctl(etcd, "put", key, value)
    poll(lambda: _stats(stub).config_reloads_failed > before)
    return _revision(etcd, key)


def _revision(etcd: str, key: str) -> int:
    fields = etcdctl(etcd, "get", key, "-w", "json")
    return int(json.loads(fields)["kvs"][0]["mod_revision"])


def _rejected(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("rejected config value")]


@pytest.mark.timeout(300)  # CLI processes: minutes on a loaded machine
def test_stats_tells_refused_values_etcd_holds_from_those_replaced_since(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    (tmp_path / "changed.toml").write_text(CHANGED)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        seed = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=10, max_retries=2)
        stub.PutPolicy(pb.PutPolicyRequest(policy=seed), timeout=30)
        first = _refused_put(etcd, key, stub, "{garbage")
        [held] = _stats(stub).refused_values_held
        assert held.key == key and held.error.startswith(f"revision {first}:"), held
        _run(server, "config", "import", str(tmp_path / "changed.toml"))
        stats = _stats(stub)  # was: still listed as if in etcd, "in force: ..."
        assert not stats.refused_values_held and [e.key for e in stats.refused_values_replaced] == [key]
        second = _refused_put(etcd, key, stub, json.dumps({"service": SERVICE, "timeout_secs": -3}))
        lines = _rejected(_run(server, "stats"))
        assert [HELD in line for line in lines] == [True, False], lines
        assert f"revision {second}:" in lines[0] and "timeout_secs" in lines[0], lines
        assert f"revision {first}:" in lines[1] and REPLACED in lines[1], lines
        stats = _stats(stub)
        assert [e.key for e in stats.refused_values_held] == [key]
        assert [e.key for e in stats.refused_values_replaced] == [key]
        assert len(stats.config_errors) == 2  # the log keeps both
        stub.RollbackPolicy(pb.RollbackPolicyRequest(service=SERVICE, reason="undo the bad put"), timeout=30)
        poll(lambda: not _stats(stub).refused_values_held)
        assert len(_stats(stub).refused_values_replaced) == 2


def _restart(etcd: str, prefix: str, spawned: list[Proc]) -> str:
    spawned[-1].kill()
    proc, server = control_plane(etcd, prefix)
    spawned.append(proc)
    return server


@pytest.mark.timeout(300)  # three control-plane starts: minutes on a loaded machine
def test_the_last_good_policy_survives_a_restart_after_a_refused_put_and_a_compaction(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    (tmp_path / "seed.toml").write_text(SEED)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        seed = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=10, max_retries=2)
        good = stub.PutPolicy(pb.PutPolicyRequest(policy=seed), timeout=30).revision
        bad = _refused_put(etcd, key, stub, "{garbage")
    server = _restart(etcd, prefix, spawned)
    out = _run(server, "policies", "get", SERVICE)
    assert f"stored at revision {good}\n" in out, out  # was: the refused value's revision
    assert "etcd holds a newer value, refused" in out and f"revision {bad}:" in out, out
    assert "\ntimeout_secs = 10\n" in out, out
    # the good revisions compacted away: the audit records still hold the last good value
    etcdctl(etcd, "put", key, "{garbage-2")
    etcdctl(etcd, "compact", str(_revision(etcd, key)))
    server = _restart(etcd, prefix, spawned)
    out = _run(server, "policies", "get", SERVICE)  # was: exit 4, no policy
    assert f"stored at revision {good}\n" in out and "\ntimeout_secs = 10\n" in out, out
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = _stats(stub).refused_values_held
        assert held.error.endswith(f"in force: the last good value, from the audit records (revision {good})")
        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=30).policies
        assert [p.timeout_secs for p in listed if p.service == SERVICE] == [10]
    diff = _run(server, "config", "diff", str(tmp_path / "seed.toml"))
    assert "(added)" not in diff, diff
