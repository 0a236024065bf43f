"""A policy written by a control plane — through the API, a config import or an operator's
rollback — after etcdctl puts made while no control plane ran keeps its last good value
once etcd compacted the key and a refused value was put, against a real etcd and
control-plane processes: the write's audit record names the key's etcd version after it,
and is the record of the version right before the refused one (the changes made while no
control plane ran, never recorded, no longer leave the last good value unknown). A
deletion's record ends one life of the key: what was recorded of it is never taken for a
later one."""

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

from tests.server.test_refused_values_held import _revision, _run, _stats
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "storage_backend"


def _policy(timeout: int) -> str:
    return json.dumps({"service": SERVICE, "timeout_secs": timeout, "max_retries": 2})


def _start(etcd: str, prefix: str, spawned: list[Proc]) -> str:
    proc, server = control_plane(etcd, prefix)
    spawned.append(proc)
    return server


def _now(etcd: str, key: str) -> int:
    return int(json.loads(etcdctl(etcd, "get", key, "-w", "json"))["header"]["revision"])


def _version(etcd: str, key: str) -> int:
    return int(json.loads(etcdctl(etcd, "get", key, "-w", "json"))["kvs"][0]["version"])


def _recorded(server: str) -> dict[int, int]:
    """The key revisions the kept records of the policy describe, with the version each names."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.ListAuditRecordsRequest(service=SERVICE, kind="policy")
        return {r.revision: r.version for r in stub.ListAuditRecords(request, timeout=30).records}


def _put(server: str, timeout: int) -> int:
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        policy = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=timeout, max_retries=2)
        return int(stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=30).revision)


def _write(how: str, server: str, etcd: str, key: str, tmp_path: Path) -> int:
    """Write 8 s through ``how``; the key's revision after it."""
    if how == "api":
        _put(server, 8)
    elif how == "import":
        path = tmp_path / "policies.toml"
        path.write_text(f"[service_specific.{SERVICE}]\ntimeout_secs = 8\nmax_retries = 2\n")
        _run(server, "config", "import", str(path), "--reason", "eight")
    else:  # an operator's rollback: 8 s put through the API, then 9 s, then undone
        _put(server, 8)
        _put(server, 9)
        _run(server, "policies", "rollback", SERVICE, "--reason", "back to eight")
    return _revision(etcd, key)


def _held(server: str, key: str) -> str:
    with grpc.insecure_channel(server) as channel:
        stub: Any = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = [e for e in _stats(stub).refused_values_held if e.key == key]
    return str(held.error)


@pytest.mark.timeout(300)  # two control-plane starts and CLI processes: minutes on a loaded machine
@pytest.mark.parametrize("how", ["api", "import", "rollback"])
def test_a_policy_written_after_etcdctl_puts_keeps_its_last_good_value_by_the_records_version(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], tmp_path: Path, how: str
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    for timeout in (5, 6, 7):  # no control plane runs: the first two are never recorded
        etcdctl(etcd, "put", key, _policy(timeout))
    server = _start(etcd, prefix, spawned)
    poll(lambda: _revision(etcd, key) in _recorded(server))  # the last alone, at the start
    good = _write(how, server, etcd, key, tmp_path)
    # the write's record names the version etcd gave the key (was: 0, none)
    assert _recorded(server)[good] == _version(etcd, key), (_recorded(server), _version(etcd, key))
    spawned[-1].kill()
    etcdctl(etcd, "put", key, "{garbage")
    bad = _revision(etcd, key)
    etcdctl(etcd, "compact", str(_now(etcd, key)))  # every value before the refused one
    server = _start(etcd, prefix, spawned)
    held = _held(server, key)
    assert held.startswith(f"revision {bad}:"), held
    # was: the defaults, "2 of the N changes ... have no audit record"
    assert held.endswith(f"in force: the last good value, from the audit records (revision {good})"), held
    out = _run(server, "policies", "get", SERVICE)
    assert f"stored at revision {good}\n" in out and "\ntimeout_secs = 8\n" in out, out


@pytest.mark.timeout(300)  # three control-plane starts: minutes on a loaded machine
def test_the_records_of_a_deleted_policy_are_never_taken_for_the_one_put_again(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    server = _start(etcd, prefix, spawned)
    _put(server, 8)  # version 1
    first = _put(server, 9)  # version 2
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stub.DeletePolicy(pb.DeletePolicyRequest(service=SERVICE, reason="gone"), timeout=30)
    recorded = _recorded(server)
    # the deletion's record is the key's last (etcd's revision may have moved on since with
    # writes of other keys: the leader's, the roster's)
    deleted = max(recorded)
    assert deleted > first and recorded[first] == 2 and recorded[deleted] == 0, recorded
    spawned[-1].kill()
    for timeout in (5, 6):  # put again while no control plane runs: versions 1 and 2 of a new life
        etcdctl(etcd, "put", key, _policy(timeout))
    good = _revision(etcd, key)
    server = _start(etcd, prefix, spawned)
    poll(lambda: good in _recorded(server))
    assert _recorded(server)[good] == 2  # the same version as the 9 s one's, before the deletion
    spawned[-1].kill()
    etcdctl(etcd, "put", key, "{garbage")
    bad = _revision(etcd, key)
    etcdctl(etcd, "compact", str(_now(etcd, key)))
    server = _start(etcd, prefix, spawned)
    held = _held(server, key)
    # the record of version 2 from before the deletion is set aside: 6 s, not 9 s, and
    # no disagreement on what made version 2
    assert held.startswith(f"revision {bad}:"), held
    assert held.endswith(f"in force: the last good value, from the audit records (revision {good})"), held
    out = _run(server, "policies", "get", SERVICE)
    assert f"stored at revision {good}\n" in out and "\ntimeout_secs = 6\n" in out, out
