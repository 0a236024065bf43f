"""A policy put several times with etcdctl while no control plane ran keeps its last good
value after etcd compacted the key and a refused value was put, against a real etcd and
control-plane processes: the start records the last of those changes with the key's etcd
version, and that record is the one right before the refused value (the changes before it,
never recorded, no longer leave the last good value unknown)."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.audit_read import invert
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
    """etcd's current revision."""
    return int(json.loads(etcdctl(etcd, "get", key, "-w", "json"))["header"]["revision"])


def _recorded(server: str) -> dict[int, int]:
    """The key revisions the kept records of the policy describe, with the version each names."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.ListAuditRecordsRequest(service=SERVICE, kind="policy")
        return {r.revision: r.version for r in stub.ListAuditRecords(request, timeout=30).records}


@pytest.mark.timeout(300)  # two control-plane starts: minutes on a loaded machine
@pytest.mark.parametrize("refused", ["watched", "unwatched"])
def test_a_policy_put_with_etcdctl_while_no_control_plane_ran_keeps_its_last_good_value(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], refused: str
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    for timeout in (5, 6, 7):  # no control plane runs: none of them is recorded now
        etcdctl(etcd, "put", key, _policy(timeout))
    good = _revision(etcd, key)
    server = _start(etcd, prefix, spawned)
    poll(lambda: good in _recorded(server))  # the last alone, at the start
    if refused == "unwatched":  # put while no control plane runs
        spawned[-1].kill()
        etcdctl(etcd, "put", key, "{garbage")
    else:  # seen in the watch, and recorded as refused
        etcdctl(etcd, "put", key, "{garbage")
        poll(lambda: _revision(etcd, key) in _recorded(server))
        spawned[-1].kill()
    bad = _revision(etcd, key)
    etcdctl(etcd, "compact", str(_now(etcd, key)))  # every value before the refused one
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub: Any = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = [e for e in _stats(stub).refused_values_held if e.key == key]
    assert held.error.startswith(f"revision {bad}:"), held.error
    in_force = f"in force: the last good value, from the audit records (revision {good})"
    # was: the defaults, "2 of the 3 changes ... have no audit record"
    assert held.error.endswith(in_force), held.error
    out = _run(server, "policies", "get", SERVICE)
    assert f"stored at revision {good}\n" in out and "\ntimeout_secs = 7\n" in out, out
    # each change from outside recorded with the key's etcd version after it
    assert _recorded(server) == {good: 3, bad: 4}, _recorded(server)


@pytest.mark.timeout(300)  # two control-plane starts: minutes on a loaded machine
def test_a_planted_record_naming_the_version_before_the_refused_one_leaves_the_last_good_value_unknown(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    for timeout in (5, 6, 7):
        etcdctl(etcd, "put", key, _policy(timeout))
    good = _revision(etcd, key)
    server = _start(etcd, prefix, spawned)
    poll(lambda: good in _recorded(server))
    spawned[-1].kill()
    # put from outside under the audit prefix, the newest: the same change, another value
    planted = {"kind": "policy", "name": SERVICE, "action": "etcd.put", "identity": "etcd"}
    planted.update(new_value=_policy(1), revision=str(good), version="3")
    etcdctl(
        etcd, "put", f"{prefix}-audit/policy/{invert(time.time_ns() + 10**12)}-feedf00d", json.dumps(planted)
    )
    etcdctl(etcd, "put", key, "{garbage")
    bad = _revision(etcd, key)
    etcdctl(etcd, "compact", str(_now(etcd, key)))
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub: Any = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = [e for e in _stats(stub).refused_values_held if e.key == key]
        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=30).policies
    assert [p.timeout_secs for p in listed if p.service == SERVICE] == [], listed  # neither 1 s nor 7 s
    assert held.error.startswith(f"revision {bad}:"), held.error
    why = "the last good value is not known: two audit records disagree on what made the key's version 3)"
    assert held.error.endswith(why), held.error
