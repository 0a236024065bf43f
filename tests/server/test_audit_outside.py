"""Changes no control plane made, against real etcd and real control-plane processes: a
change made while no replica watched is recorded when one starts, and records put under
the audit prefix from outside are listed as not written by a control plane."""

from __future__ import annotations

import json
import signal
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_cli import cli
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

SERVICE = "llm_provider"


def _audit(server: str, *args: str) -> list[dict[str, Any]]:
    result = cli("audit", "--json", *args, server=server)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _put_policy(server: str, timeout_secs: float) -> None:
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        policy = policy_pb2.ServicePolicy(service=SERVICE, timeout_secs=timeout_secs)
        stub.PutPolicy(pb.PutPolicyRequest(policy=policy, reason="tuning"), timeout=30)


def test_a_change_made_while_no_replica_watched_is_recorded_at_start(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    _put_policy(server, 7)
    _put_policy(server, 8)
    proc.kill(signal.SIGTERM)
    proc.popen.wait(timeout=30)
    etcdctl(
        etcd_server.endpoint,
        "put",
        f"{prefix}/policies/{SERVICE}",
        json.dumps({"service": SERVICE, "timeout_secs": 9}),
    )
    again, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(again)

    def outside() -> list[dict[str, Any]]:
        return [r for r in _audit(server, "--service", SERVICE) if r["identity"] == "etcd"]

    [record] = poll(outside, timeout=20)
    assert record["action"] == "etcd.put"
    assert record["provenance"] == "verified"  # a control plane recorded it, with its mark
    assert json.loads(record["old_value"])["timeout_secs"] == 8  # the value last recorded
    assert json.loads(record["new_value"])["timeout_secs"] == 9
    stored = json.loads(etcdctl(etcd_server.endpoint, "get", f"{prefix}/policies/{SERVICE}", "-w", "json"))
    assert record["revision"] == stored["kvs"][0]["mod_revision"]
    # the hand-written value holds two fields: the others take their defaults, which they
    # held already: only the field that changed is shown
    diff = cli(
        "policies", "diff", SERVICE, str(record["revision"] - 1), str(record["revision"]), server=server
    )
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.strip() == "timeout_secs: 8.0 -> 9.0", diff.stdout
    # a further start finds the change recorded: no second record
    again.kill(signal.SIGTERM)
    again.popen.wait(timeout=30)
    third, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(third)
    poll(lambda: any(r["action"] == "policy.put" for r in _audit(server)), timeout=20)
    assert len(outside()) == 1


def test_records_put_from_outside_are_listed_as_such(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, server = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    _put_policy(server, 7)
    bucket = f"{prefix}-audit/policy/"
    forged = {"identity": "token:alice", "action": "policy.put", "kind": "policy", "name": SERVICE}
    etcdctl(etcd_server.endpoint, "put", f"{bucket}00000000000000000000-forged01", json.dumps(forged))
    etcdctl(etcd_server.endpoint, "put", f"{bucket}00000000000000000001-broken01", "{not json")
    etcdctl(etcd_server.endpoint, "put", f"{bucket}00000000000000000002-nested01", "[" * 100_000)
    records = _audit(server)
    by_action = {(r.get("identity", ""), r["action"]): r.get("provenance") for r in records}
    assert by_action[("local", "policy.put")] == "verified"
    assert by_action[("token:alice", "policy.put")] == "not written by a control plane"
    unreadable = [r for r in records if r["action"] == "(unreadable record)"]
    assert len(unreadable) == 2 and {r["provenance"] for r in unreadable} == {
        "not written by a control plane"
    }
    table = cli("audit", server=server).stdout
    assert "(not written by a control plane)" in table and "control plane" in table
