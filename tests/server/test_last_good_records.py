"""The last good policy read back from the audit records (etcd compacted the key's earlier
revisions) against a real etcd and control-plane processes: a good value put while no control
plane ran is never passed over for an older recorded one, a record put from outside under the
audit prefix is never picked (set aside when it cannot be what it says, or the pick given up
when the records no longer add up), and pruned records do not hide the last good value."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.audit_read import invert
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_cli import cli
from tests.server.test_refused_values_held import SERVICE, _refused_put, _revision, _run, _stats
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

DEFAULTS = "in force: the defaults (the last good value is not known: "


def _start(etcd: str, prefix: str, spawned: list[Proc], *extra: str) -> str:
    proc, server = control_plane(etcd, prefix, *extra)
    spawned.append(proc)
    return server


def _seeded(etcd: str, prefix: str, spawned: list[Proc]) -> int:
    """A control plane puts the seed policy (timeout 10 s), then stops; its revision."""
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        seed = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=10, max_retries=2)
        good = int(stub.PutPolicy(pb.PutPolicyRequest(policy=seed), timeout=30).revision)
    spawned[-1].kill()
    return good


def _policy(timeout: int) -> str:
    return json.dumps({"service": SERVICE, "timeout_secs": timeout, "max_retries": 2})


def _garbage_compacted(etcd: str, key: str) -> int:
    etcdctl(etcd, "put", key, "{garbage")
    bad = _revision(etcd, key)
    etcdctl(etcd, "compact", str(bad))
    return bad


def _in_force(server: str) -> tuple[str, list[int]]:
    """What `stats` says is in force for the refused value, and the timeouts listed."""
    with grpc.insecure_channel(server) as channel:
        stub: Any = pb_grpc.ControlPlaneServiceStub(channel)
        [held] = _stats(stub).refused_values_held
        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=30).policies
        return held.error, [p.timeout_secs for p in listed if p.service == SERVICE]


@pytest.mark.timeout(300)  # two control-plane starts: minutes on a loaded machine
def test_a_good_value_put_while_no_control_plane_ran_is_not_passed_over_for_an_older_recorded_one(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    good = _seeded(etcd, prefix, spawned)
    etcdctl(etcd, "put", key, _policy(7))  # good, and no record of it: nothing watched
    bad = _garbage_compacted(etcd, key)
    server = _start(etcd, prefix, spawned)
    error, listed = _in_force(server)
    assert listed == [], listed  # was: [10], the value the 7 s one replaced
    assert error.startswith(f"revision {bad}:"), error
    assert error.endswith(
        f"{DEFAULTS}1 of the 2 changes since the key was created (revision {good}) and before"
        f" revision {bad} have no audit record (made while no control plane ran)"
        " and etcd compacted them)"
    ), error
    result = cli("policies", "get", SERVICE, server=server)
    assert result.returncode == 4 and "timeout_secs = 10" not in result.stdout, result
    assert f"etcd holds a value for it, refused (revision {bad}:" in result.stderr, result


def _plant(etcd: str, prefix: str, revision: int | None, timeout: int) -> None:
    """Put an audit record from outside: the newest, saying a change wrote ``timeout``."""
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "identity": "local",
        "action": "policy.put",
        "kind": "policy",
        "name": SERVICE,
        "new_value": _policy(timeout),
    }
    if revision is not None:
        record["revision"] = str(revision)
    key = f"{prefix}-audit/policy/{invert(time.time_ns() + 10**12)}-feedf00d"
    etcdctl(etcd, "put", key, json.dumps(record))


def _recorded(server: str, revision: int) -> bool:
    """Whether a record of the change at ``revision`` is kept."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.ListAuditRecordsRequest(service=SERVICE, kind="policy")
        records = stub.ListAuditRecords(request, timeout=30).records
        return any(r.revision == revision for r in records)


def _restart(etcd: str, prefix: str, spawned: list[Proc]) -> str:
    spawned[-1].kill()
    return _start(etcd, prefix, spawned)


@pytest.mark.timeout(300)  # three control-plane starts: minutes on a loaded machine
@pytest.mark.parametrize("claim", ["its own revision", "the good value's revision", "a later revision"])
def test_an_audit_record_put_from_outside_is_never_the_pick(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], claim: str
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    good = _seeded(etcd, prefix, spawned)
    if claim == "its own revision":  # no revision named: written with a change it is not
        _plant(etcd, prefix, None, 1)
    elif claim == "the good value's revision":  # as a change from outside recorded late
        _plant(etcd, prefix, good, 1)
    else:  # a change made after the record was written: what no record can describe
        _plant(etcd, prefix, _revision(etcd, key) + 2, 1)
        etcdctl(etcd, "put", f"{prefix}-unrelated", "x")
    bad = _garbage_compacted(etcd, key)
    server = _start(etcd, prefix, spawned)
    in_force = f"in force: the last good value, from the audit records (revision {good})"
    error, listed = _in_force(server)
    assert listed == [10], (listed, error)  # was: [1], the planted value
    assert error.startswith(f"revision {bad}:") and error.endswith(in_force), error
    out = _run(server, "policies", "get", SERVICE)
    assert f"stored at revision {good}\n" in out and "\ntimeout_secs = 10\n" in out, out
    # recorded at that start as refused (the mark names that record now): the same pick
    poll(lambda: _recorded(server, bad))
    server = _restart(etcd, prefix, spawned)
    error, listed = _in_force(server)
    assert listed == [10] and error.endswith(in_force), (listed, error)


@pytest.mark.timeout(300)  # two control-plane starts: minutes on a loaded machine
def test_a_planted_record_below_a_refused_value_makes_the_records_not_add_up(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    server = _start(etcd, prefix, spawned)
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        seed = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=10, max_retries=2)
        good = int(stub.PutPolicy(pb.PutPolicyRequest(policy=seed), timeout=30).revision)
        etcdctl(etcd, "put", f"{prefix}-unrelated", "x")
        first = _refused_put(etcd, key, stub, "{garbage-1")
    poll(lambda: _recorded(server, first))
    spawned[-1].kill()
    between = _revision(etcd, f"{prefix}-unrelated")
    assert good < between < first, (good, between, first)
    _plant(etcd, prefix, between, 1)  # the newest record, naming a change etcd never made
    bad = _garbage_compacted(etcd, key)
    server = _start(etcd, prefix, spawned)
    error, listed = _in_force(server)
    assert listed == [], listed  # was: [1], the planted value
    assert error.endswith(
        f"{DEFAULTS}audit records name 3 changes since the key was created (revision {good}) and"
        f" before revision {bad}, 2 were made or recorded: not all are genuine)"
    ), error


@pytest.mark.timeout(300)  # two control-plane starts: minutes on a loaded machine
def test_the_last_good_value_is_picked_when_older_records_were_pruned(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    server = _start(etcd, prefix, spawned, "--audit-max-records", "1")
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        for timeout in (10, 11, 12):
            seed = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=timeout, max_retries=2)
            last = int(stub.PutPolicy(pb.PutPolicyRequest(policy=seed), timeout=30).revision)
    poll(lambda: not _recorded(server, last - 1))  # pruned: the newest alone is kept
    spawned[-1].kill()
    bad = _garbage_compacted(etcd, key)
    server = _start(etcd, prefix, spawned)
    error, listed = _in_force(server)
    assert listed == [12], (listed, error)
    assert error.startswith(f"revision {bad}:"), error
    assert error.endswith(f"in force: the last good value, from the audit records (revision {last})"), error
