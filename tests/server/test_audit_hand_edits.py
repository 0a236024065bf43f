"""A fleet edited only by hand keeps its audit bound, against a real etcd and control-plane
processes: the records of changes made with etcdctl trigger the prune (no control-plane
write is made), the oldest past ``--audit-max-records`` are deleted, and the records a
policy's last good value is read back from are kept (:mod:`mission_control.server.audit_kept`):
after a compaction and a restart that value is still in force."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_audit_kept import _revisions
from tests.server.test_refused_values_held import _revision, _stats
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

MOST = 3
KEPT, CHURN = "keepme", "churn"


def _start(etcd: str, prefix: str, spawned: list[Proc]) -> str:
    proc, server = control_plane(etcd, prefix, "--audit-max-records", str(MOST))
    spawned.append(proc)
    return server


def _put(etcd: str, server: str, key: str, service: str, value: str) -> int:
    """Put ``value`` with etcdctl; waits until its change is recorded and returns its revision."""
    etcdctl(etcd, "put", key, value)
    revision = _revision(etcd, key)
    poll(lambda: revision in _revisions(server, service))
    return revision


def _policy(service: str, timeout: int) -> str:
    return json.dumps({"service": service, "timeout_secs": timeout, "max_retries": 1})


@pytest.mark.timeout(300)  # two control-plane starts and several prunes: minutes on a loaded machine
def test_changes_made_by_hand_alone_are_pruned_past_the_count_bound_and_the_last_good_records_kept(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, kept = etcd_server.endpoint, f"{prefix}/policies/{KEPT}"
    server = _start(etcd, prefix, spawned)
    created = _put(etcd, server, kept, KEPT, _policy(KEPT, 12))
    good = _put(etcd, server, kept, KEPT, _policy(KEPT, 13))
    bad = _put(etcd, server, kept, KEPT, "{garbage")
    churn = f"{prefix}/policies/{CHURN}"
    changes = [_put(etcd, server, churn, CHURN, _policy(CHURN, timeout)) for timeout in range(1, 11)]
    # the newest MOST of the kind are the churn's: the older ones are pruned, with no
    # control-plane write (was: all 10 kept until one), but the record of its creation
    # (its mark counts the changes from there)
    kept_churn = [*changes[: -MOST - 1 : -1], changes[0]]
    poll(lambda: _revisions(server, CHURN) == kept_churn, timeout=120)
    # past the bound, the refused value's record (its mark names it), the good one before
    # it, and the creation's (its mark counts the changes from there) are kept
    assert _revisions(server, KEPT) == [bad, good, created]
    with grpc.insecure_channel(server) as channel:
        stub: Any = pb_grpc.ControlPlaneServiceStub(channel)
        assert _stats(stub).audit_records_pruned >= 10 - MOST - 1

    etcdctl(etcd, "compact", str(_revision(etcd, churn)))
    spawned[-1].kill()
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = [e for e in _stats(stub).refused_values_held if e.key == kept]
        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=30).policies
    assert held.error.startswith(f"revision {bad}:"), held.error
    assert held.error.endswith(f"in force: the last good value, from the audit records (revision {good})")
    assert [p.timeout_secs for p in listed if p.service == KEPT] == [13], listed
