"""What the audit prune keeps past its bounds, against a real etcd with an injected wall
clock: the record each present key's mark names, past the age bound and the count bound
of its kind, and a policy's record written with its mark's first version; a deleted key's
records are pruned; a policy holding a refused value keeps its records from the newest
good value on."""

from __future__ import annotations

import json

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.audit import AuditLog, Author, Change, Retention
from mission_control.server.audit_kept import KeptRecords
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore


def _value(service: str, timeout: int) -> bytes:
    return json.dumps({"service": service, "timeout_secs": timeout}).encode()


def _refuses(change: Change) -> bool:
    return change.new is not None and not change.new.startswith(b'{"')


async def _names(log: AuditLog) -> list[tuple[str, str]]:
    """(name, value written) of every record kept, oldest first."""
    records: list[pb.AuditRecord] = (await log.page(size=1000, verify=False)).records
    return [(r.name, r.new_value) for r in records[::-1]]


async def test_the_prune_keeps_what_each_present_key_last_recorded(
    etcd_server: EtcdProcess, prefix: str
) -> None:
    now = [1_000_000.0]
    store = await EtcdStore([etcd_server.endpoint]).connect()
    log = AuditLog(store, prefix, "r1", Retention(max_records=2, max_age_secs=100), wall=lambda: now[0])
    refused: list[str] = []

    def change_of(key: str, new: bytes | None, old: bytes | None) -> Change | None:
        name = key.rpartition("/")[2]
        return Change("breaker" if name == "busy" else "policy", name, old, new, key)

    kept = KeptRecords(log, change_of, _refuses, lambda: list(refused))

    async def write(name: str, value: bytes | None) -> None:
        change = change_of(f"{prefix}/policies/{name}", value, None)
        assert change is not None
        await store.commit(log.record_writes([change], Author("local"), "put"))
        now[0] += 1

    try:
        await write("keep", _value("keep", 1))  # the mark's first version: kept too
        await write("keep", _value("keep", 2))
        await write("gone", _value("gone", 3))
        await write("gone", None)  # deleted: its mark says absent
        now[0] += 200  # every record past the age bound
        assert await log.prune(kept.find) == 2
        assert await _names(log) == [
            ("keep", _value("keep", 1).decode()),
            ("keep", _value("keep", 2).decode()),
        ]
        for i in range(4):  # past the count bound (2): the newest two kept
            await write("busy", _value("busy", i))
        assert await log.prune(kept.find) == 2
        assert [v for _, v in await _names(log)][2:] == [_value("busy", i).decode() for i in (2, 3)]
        assert await log.prune(kept.find) == 0

        await write("keep", b"garbage-1")
        await write("keep", b"garbage-2")
        refused.append(f"{prefix}/policies/keep")  # held now: the value in force is the last good one
        now[0] += 200
        # the older of busy; past the count bound, the policy records kept all are
        assert await log.prune(kept.find) == 1
        assert await _names(log) == [
            ("keep", _value("keep", 1).decode()),
            ("keep", _value("keep", 2).decode()),
            ("busy", _value("busy", 3).decode()),
            ("keep", "garbage-1"),
            ("keep", "garbage-2"),
        ]
        await write("keep", _value("keep", 5))  # a good value again: those since the last one go
        refused.clear()
        now[0] += 200
        assert await log.prune(kept.find) == 3
        assert [v for _, v in await _names(log)] == [
            _value("keep", 1).decode(),
            _value("busy", 3).decode(),
            _value("keep", 5).decode(),
        ]
    finally:
        await store.close()
