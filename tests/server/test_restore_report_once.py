"""What a restore took back is recorded once (``restore.reverted``), also when etcd applies
the write of its record and the answer is lost: the restore is tried again and finds the
record stored, instead of making another one (``server/restore_report.py``). The in-memory
etcd of the simulation, on its virtual clock; the lost answer is a commit applied and then
failed, as a timeout after etcd took the write.

Before: every try compared again and wrote a new record (another time, another key), and
``mission-control audit`` showed the revert twice."""

from __future__ import annotations

import json
import random

import pytest
from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy
from mission_control.server.audit import AuditLog
from mission_control.server.engine import FleetBreakers
from mission_control.server.policies import PolicyBook
from mission_control.server.restore_report import REVERTED
from mission_control.server.store import StoreUnavailable
from mission_control.server.writes import StateWriter

from ..sim_fleet import vloop
from ..sim_fleet.memstore import MemEtcd, MemStore

PREFIX = "/mission-control/v1"


def reverted_records(etcd: MemEtcd) -> list[dict[str, str]]:
    """The audit records of a revert the store holds."""
    found = []
    for key, entry in etcd.keys.items():
        if key.startswith(f"{PREFIX}-audit/") and entry.value.startswith(b"{"):
            record = json.loads(entry.value)
            if record.get("action") == REVERTED:
                found.append(record)
    return found


async def restore_with_a_lost_answer() -> tuple[MemEtcd, int]:
    etcd = MemEtcd(random.Random(7))
    store = MemStore(etcd)
    policies = PolicyBook(PREFIX)
    writer = StateWriter(
        store, lambda name: f"{PREFIX}/breakers/{name}", FleetBreakers(policies.policy_of), policies
    )
    writer.audit = AuditLog(store, PREFIX, "cp0")
    await writer.put_policy(ServicePolicy("svc", timeout_secs=7.0))
    writer.data_lost()  # the leader found etcd restored from a backup...
    backup = ServicePolicy("svc", timeout_secs=3.0)
    etcd.put_raw(policies.key("svc"), policy_to_json(backup).encode())  # ...holding the older value
    commit, lost = store.commit, 0

    async def answer_lost(writes, guards=(), *, timeout=None):  # type: ignore[no-untyped-def]
        nonlocal lost
        result = await commit(writes, guards, timeout=timeout)
        if not lost and any(REVERTED.encode() in (w.value or b"") for w in writes):
            lost += 1
            raise StoreUnavailable("etcd: deadline exceeded (the write may have happened)")
        return result

    store.commit = answer_lost  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await writer._restore()
    assert writer.restore_pending, "the restore is tried again"
    await writer._restore()
    assert not writer.restore_pending
    return etcd, lost


def test_a_reverted_policy_is_recorded_once_when_the_answer_to_its_record_is_lost() -> None:
    etcd, lost = vloop.run(restore_with_a_lost_answer())
    assert lost == 1
    records = reverted_records(etcd)
    assert len(records) == 1, records
    shown = records[0]
    assert json.loads(shown["old_value"])["timeout_secs"] == 7.0
    assert json.loads(shown["new_value"])["timeout_secs"] == 3.0
