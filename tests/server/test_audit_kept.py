"""The audit prune keeps a policy's only good value past the age bound, against a real etcd
and control-plane processes: a policy unchanged for longer than ``--audit-max-age-days``,
then a refused value put with etcdctl, a compaction and a restart, still has its last good
value in force, read back from the record the prune kept."""

from __future__ import annotations

import json
import time
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

AGE_SECS = 8.0
KEPT = "keepme"


def _start(etcd: str, prefix: str, spawned: list[Proc]) -> str:
    proc, server = control_plane(etcd, prefix, "--audit-max-age-days", str(AGE_SECS / 86400))
    spawned.append(proc)
    return server


def _policy(service: str, timeout: int) -> str:
    return json.dumps({"service": service, "timeout_secs": timeout, "max_retries": 1})


def _revisions(server: str, service: str) -> list[int]:
    """The key revisions the kept records of ``service`` describe."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.ListAuditRecordsRequest(service=service, kind="policy")
        return [r.revision for r in stub.ListAuditRecords(request, timeout=30).records]


def _put_and_delete(etcd: str, server: str, prefix: str, service: str) -> None:
    """A policy put and deleted with etcdctl (its records are pruned once aged); waits
    until each change is recorded."""
    key = f"{prefix}/policies/{service}"
    etcdctl(etcd, "put", key, _policy(service, 3))
    put = _revision(etcd, key)
    poll(lambda: put in _revisions(server, service))  # else a deletion right after: nothing seen
    deleted = int(json.loads(etcdctl(etcd, "del", key, "-w", "json"))["header"]["revision"])
    # recorded at its own revision, after the deletion's (the put's may be pruned already)
    poll(lambda: any(r >= deleted for r in _revisions(server, service)))


def _aged(since: float) -> None:
    """Wait until the records written before ``since`` are past the age bound."""
    poll(lambda: time.time() > since + AGE_SECS + 0.5, timeout=AGE_SECS + 30)


@pytest.mark.timeout(300)  # two control-plane starts and two age bounds: minutes on a loaded machine
def test_the_prune_keeps_a_policys_only_good_value_past_the_age_bound(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{KEPT}"
    server = _start(etcd, prefix, spawned)
    etcdctl(etcd, "put", key, _policy(KEPT, 12))
    good = _revision(etcd, key)
    poll(lambda: _revisions(server, KEPT) == [good])
    _put_and_delete(etcd, server, prefix, "gone")
    _aged(time.time())
    with grpc.insecure_channel(server) as channel:  # a control-plane write: a prune
        stub: Any = pb_grpc.ControlPlaneServiceStub(channel)
        other = policy_pb2.ServicePolicy(service="other", timeout_secs=3, max_retries=1)
        stub.PutPolicy(pb.PutPolicyRequest(policy=other), timeout=30)
        poll(lambda: _stats(stub).audit_records_pruned >= 2)
    assert _revisions(server, "gone") == []  # aged, of a key that no longer exists: pruned
    assert _revisions(server, KEPT) == [good]  # was: [], the only good value pruned

    etcdctl(etcd, "put", key, "{garbage")
    bad = _revision(etcd, key)
    poll(lambda: _revisions(server, KEPT) == [bad, good])
    _put_and_delete(etcd, server, prefix, "gone2")
    _aged(time.time())
    _run(server, "breakers", "force-open", "trigger", "--create", "--reason", "a write: a prune")
    poll(lambda: _revisions(server, "gone2") == [])
    # both aged: the refused value's record (the mark names it) and the good one before it
    assert _revisions(server, KEPT) == [bad, good]

    etcdctl(etcd, "compact", str(_revision(etcd, f"{prefix}/breakers/trigger")))
    spawned[-1].kill()
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = [e for e in _stats(stub).refused_values_held if e.key == key]
        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=30).policies
    assert held.error.startswith(f"revision {bad}:"), held.error
    in_force = f"in force: the last good value, from the audit records (revision {good})"
    assert held.error.endswith(in_force), held.error  # was: the defaults, the value not known
    assert [p.timeout_secs for p in listed if p.service == KEPT] == [12], listed
    out = _run(server, "policies", "get", KEPT)
    assert f"stored at revision {good}\n" in out and "\ntimeout_secs = 12\n" in out, out


@pytest.mark.timeout(300)  # two control-plane starts and an age bound: minutes on a loaded machine
def test_a_policy_put_with_etcdctl_and_changed_since_keeps_its_last_good_value(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{KEPT}"
    server = _start(etcd, prefix, spawned)
    etcdctl(etcd, "put", key, _policy(KEPT, 12))  # its mark is created after it, with this record
    created = _revision(etcd, key)
    poll(lambda: _revisions(server, KEPT) == [created])
    etcdctl(etcd, "put", key, _policy(KEPT, 13))
    changed = _revision(etcd, key)
    poll(lambda: _revisions(server, KEPT) == [changed, created])
    etcdctl(etcd, "put", key, _policy(KEPT, 14))
    good = _revision(etcd, key)
    poll(lambda: _revisions(server, KEPT) == [good, changed, created])
    _put_and_delete(etcd, server, prefix, "gone")
    _aged(time.time())
    etcdctl(etcd, "put", key, "{garbage")
    bad = _revision(etcd, key)
    poll(lambda: bad in _revisions(server, KEPT))
    _run(server, "breakers", "force-open", "trigger", "--create", "--reason", "a write: a prune")
    poll(lambda: _revisions(server, "gone") == [])  # a prune ran with everything aged
    # the refused value's, the good one's, and the creation's (the mark counts the changes
    # from there); the one between is pruned
    poll(lambda: _revisions(server, KEPT) == [bad, good, created])

    etcdctl(etcd, "compact", str(bad))
    spawned[-1].kill()
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = [e for e in _stats(stub).refused_values_held if e.key == key]
    in_force = f"in force: the last good value, from the audit records (revision {good})"
    assert held.error.endswith(in_force), held.error  # was: 1 of the 3 changes have no record
