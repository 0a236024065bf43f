"""The etcd version each control-plane write's audit record names, against a real etcd:
an operator's breaker writes through the CLI of a control-plane process, and a policy
written last-writer-wins over a change this writer never saw (sent again on it, its record
saying what it replaced)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_from_json
from mission_control.client.policy import default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.audit import AuditLog
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore
from mission_control.server.writes import StateWriter

from tests.server.test_refused_values_held import _run
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, control_plane

SERVICE = "storage_backend"


def _stored(etcd: str, key: str) -> tuple[int, int]:
    """The key's (mod_revision, version)."""
    [kv] = json.loads(etcdctl(etcd, "get", key, "-w", "json"))["kvs"]
    return int(kv["mod_revision"]), int(kv["version"])


def _records(server: str, kind: str, name: str) -> dict[int, tuple[str, int]]:
    """The records of ``name``: revision -> (action, version)."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        request = pb.ListAuditRecordsRequest(service=name, kind=kind)
        return {r.revision: (r.action, r.version) for r in stub.ListAuditRecords(request, timeout=30).records}


@pytest.mark.timeout(300)  # CLI processes: minutes on a loaded machine
def test_an_operators_breaker_writes_name_the_version_they_gave_the_key(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/breakers/payments"
    proc, server = control_plane(etcd, prefix)
    spawned.append(proc)
    written = {}
    for args in (["force-open", "payments", "--create"], ["force-close", "payments"], ["reset", "payments"]):
        _run(server, "breakers", *args, "--reason", "INC-7")
        revision, version = _stored(etcd, key)
        written[revision] = version
    records = _records(server, "breaker", "payments")
    # was: version 0 in each
    assert {r: v for r, (_, v) in records.items()} == written == dict(zip(written, (1, 2, 3), strict=True)), (
        records
    )
    assert [a for _, (a, _) in sorted(records.items())] == [
        "breaker.forced_open",
        "breaker.forced_closed",
        "breaker.reset",
    ], records


@pytest.fixture
async def writer(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[StateWriter]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    policies = PolicyBook(prefix)
    writer = StateWriter(
        store,
        lambda name: f"{prefix}/breakers/{name}",
        FleetBreakers(lambda name: default_policy(name)),
        policies,
    )
    writer.audit = AuditLog(store, prefix)
    try:
        yield writer
    finally:
        await store.close()


def _value(timeout: int) -> bytes:
    return json.dumps({"service": SERVICE, "timeout_secs": timeout}).encode()


async def test_a_last_writer_wins_put_over_a_change_it_never_saw_names_the_version_after_both(
    writer: StateWriter, etcd_server: EtcdProcess, prefix: str
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/policies/{SERVICE}"
    assert writer.audit is not None
    first = await writer.put_policy(policy_from_json(_value(5), service=SERVICE))
    assert first is not None and _stored(etcd, key) == (first, 1)
    reads = writer.versions.reads
    etcdctl(etcd, "put", key, _value(6))  # not seen here: held at version 1 still
    second = await writer.put_policy(policy_from_json(_value(7), service=SERVICE))
    assert second is not None and _stored(etcd, key) == (second, 3)
    assert writer.versions.reads == reads  # read in the failed compare, not alone
    records = {r.revision: r for r in await writer.audit.of("policy", SERVICE, 100)}
    assert (records[first].version, records[second].version) == (1, 3), records
    assert json.loads(records[second].old_value)["timeout_secs"] == 6  # what it replaced
    # a put compared with the revision held (an update's expected revision): no read
    third = await writer.put_policy(policy_from_json(_value(8), service=SERVICE), second)
    assert third is not None and _stored(etcd, key) == (third, 4) and writer.versions.reads == reads
    # compared with a revision written elsewhere (as the watch tells it): read once
    etcdctl(etcd, "put", key, _value(9))
    elsewhere, _ = _stored(etcd, key)
    fourth = await writer.put_policy(policy_from_json(_value(10), service=SERVICE), elsewhere)
    assert fourth is not None and _stored(etcd, key) == (fourth, 6) and writer.versions.reads == reads + 1
    await writer.delete_policy(SERVICE)
    records = {r.revision: r for r in await writer.audit.of("policy", SERVICE, 100)}
    assert [(r.action, r.version) for _, r in sorted(records.items())][2:] == [
        ("policy.put", 4),
        ("policy.put", 6),
        ("policy.delete", 0),  # no version after a deletion
    ], records


async def test_a_breaker_state_forced_over_one_written_elsewhere_names_the_version_after_it(
    writer: StateWriter, etcd_server: EtcdProcess, prefix: str
) -> None:
    etcd, key = etcd_server.endpoint, f"{prefix}/breakers/payments"
    assert writer.audit is not None
    forced = await writer.set_breaker_state("payments", BreakerState.FORCED_OPEN, "INC-8")
    assert _stored(etcd, key) == (forced.revision, 1)
    # written elsewhere (another writer's reset), adopted here once its compare failed
    etcdctl(etcd, "put", key, etcdctl(etcd, "get", key, "--print-value-only").strip())
    reset = await writer.set_breaker_state("payments", BreakerState.CLOSED, "INC-8 over")
    assert _stored(etcd, key) == (reset.revision, 3)
    records = {r.revision: r.version for r in await writer.audit.of("breaker", "payments", 100)}
    assert records == {forced.revision: 1, reset.revision: 3}, records
