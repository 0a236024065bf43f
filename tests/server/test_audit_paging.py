"""Many audit records against a real etcd and a real control-plane process: they are not
in the prefix every replica loads, a page reads a bounded number of them, the leader keeps
its lease, and records an earlier version kept in the loaded prefix are moved out."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.audit import AuditLog, Author, Change
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore

from tests.server.test_cli import cli
from tests.support.etcd import etcdctl
from tests.support.polling import poll
from tests.support.procs import Proc, control_plane

RECORDS = 10_000
PAGE = 50
#: What one page may read, whatever is kept (four pages and a little more).
MOST_READ = 4 * PAGE + 64
LEGACY = {
    "identity": "token:bob", "action": "policy.put", "kind": "policy", "name": "legacy_svc",
    "reason": "kept by an earlier version", "new_value": "{}",
}  # fmt: skip


async def _write_records(endpoint: str, prefix: str) -> None:
    store = await EtcdStore([endpoint]).connect()
    log = AuditLog(store, prefix, "filler")
    try:
        for start in range(0, RECORDS, 100):
            changes = [Change("breaker", f"svc-{i}", None, b"{}") for i in range(start, start + 100)]
            result = await store.commit(
                log.record_writes(changes, Author("token:load"), "breaker.forced_open")
            )
            assert result.succeeded
    finally:
        await store.close()


def _leader_epoch(endpoint: str, prefix: str) -> int:
    out = json.loads(etcdctl(endpoint, "get", f"{prefix}/leader", "-w", "json"))
    return int(out["kvs"][0]["create_revision"]) if out.get("kvs") else 0


async def test_ten_thousand_records_are_paged_with_bounded_reads(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    endpoint = etcd_server.endpoint
    await _write_records(endpoint, prefix)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)  # older than every other record, within the age bound
    legacy = {**LEGACY, "time": hour_ago.isoformat().replace("+00:00", "Z")}
    etcdctl(
        endpoint, "put", f"{prefix}/audit/{hour_ago.timestamp() * 1e9:020.0f}-abcdef01-0", json.dumps(legacy)
    )
    proc, server = control_plane(endpoint, prefix, "--audit-max-records", str(2 * RECORDS))
    spawned.append(proc)
    epoch = poll(lambda: _leader_epoch(endpoint, prefix))
    # the record of the earlier version is moved out of the loaded prefix, and listed
    poll(lambda: not etcdctl(endpoint, "get", f"{prefix}/audit/", "--prefix", "--keys-only").strip())
    loaded = etcdctl(endpoint, "get", f"{prefix}/", "--prefix", "--keys-only").split()
    assert len(loaded) < 50, loaded[:20]
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        first = stub.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=PAGE), timeout=30)
        assert len(first.records) == PAGE and first.next_page_token
        assert first.records_read <= MOST_READ
        # the newest transaction's records first, in the order it wrote them
        assert [r.name for r in first.records[:2]] == [f"svc-{RECORDS - 100}", f"svc-{RECORDS - 99}"]
        second = stub.ListAuditRecords(
            pb.ListAuditRecordsRequest(page_size=PAGE, page_token=first.next_page_token), timeout=30
        )
        assert second.records[0].name == f"svc-{RECORDS - 100 + PAGE}" and second.records_read <= MOST_READ
        # a filter matching nothing: still a bounded read, and a token to go on with
        none = stub.ListAuditRecords(pb.ListAuditRecordsRequest(page_size=PAGE, service="nobody"), timeout=30)
        assert not none.records and none.next_page_token and none.records_read <= MOST_READ
        # a filter on time: the newest records only, and nothing more to read after them
        since = pb.ListAuditRecordsRequest(page_size=PAGE)
        since.since.FromNanoseconds(time.time_ns() - 3600 * 10**9)
        assert stub.ListAuditRecords(since, timeout=30).records_read <= MOST_READ
        found, pages = [], 0
        request = pb.ListAuditRecordsRequest(service="legacy_svc")
        while True:  # older than every other record: found after some pages
            page = stub.ListAuditRecords(request, timeout=30)
            found += page.records
            pages += 1
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    assert [(r.identity, r.reason, r.provenance) for r in found] == [
        ("token:bob", LEGACY["reason"], "verified")
    ]
    assert 1 < pages < 10
    shown = cli("audit", "--limit", "3", "--json", server=server)
    assert shown.returncode == 0, shown.stderr
    assert [r["name"] for r in json.loads(shown.stdout)] == [f"svc-{RECORDS - 100 + i}" for i in range(3)]
    assert _leader_epoch(endpoint, prefix) == epoch  # the leader kept its lease throughout
