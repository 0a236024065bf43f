"""What a restore undid is said against what the backup brought back, not against an
operator's write that landed after the loss was found (real etcd restored from a backup,
a control plane in this process). The write is made to land between the leader finding
the loss and its report reading the policies. Before: the report named the operator's
later write as the value the restore put in force."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy
from mission_control.server.control_plane import ControlPlane
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.restore_report import REVERTED
from mission_control.server.store import EtcdStore, Write

from tests.server.test_restore_backup import restore
from tests.support.etcd import etcdctl

SERVICE = "reported"


def value(timeout: float) -> bytes:
    return policy_to_json(ServicePolicy(service=SERVICE, timeout_secs=timeout)).encode()


class WriteMeanwhile(EtcdStore):
    """The first read of the policies while a restore is pending puts ``later`` first (an
    operator's write that lands just before the report reads)."""

    plane: ControlPlane | None = None
    key = ""
    later = b""
    written = 0

    async def get_prefix(self, prefix: str, *, revision: int = 0):  # type: ignore[no-untyped-def]
        plane = self.plane
        if plane is not None and prefix == plane.policies.prefix and plane.writer.restore_pending:
            self.plane = None
            self.written = (await self.commit([Write(self.key, self.later)])).revision
        return await super().get_prefix(prefix, revision=revision)


async def test_the_report_says_the_backups_value_not_a_write_made_after_the_loss_was_found(
    etcd: EtcdProcess, prefix: str, tmp_path: Path
) -> None:
    store = WriteMeanwhile([etcd.endpoint])
    await store.connect()
    plane = ControlPlane(store, prefix=prefix, instance_id="only")
    key = f"{plane.policies.prefix}{SERVICE}"
    try:
        await plane.start()
        await store.commit([Write(key, value(3.0))])
        await _until(lambda: _timeout(plane) == 3.0)
        await _until(lambda: bool(plane.history.token))
        await asyncio.to_thread(etcdctl, etcd.endpoint, "snapshot", "save", str(tmp_path / "b.db"))
        await store.commit([Write(key, value(7.0))])
        await _until(lambda: _timeout(plane) == 7.0)
        store.key, store.later, store.plane = key, value(9.0), plane
        await asyncio.to_thread(restore, etcd, tmp_path / "b.db")
        await _until(lambda: store.written > 0, 60)
        records = await _reverted(store, prefix)
        for _ in range(1500):
            if records:
                break
            await asyncio.sleep(0.02)
            records = await _reverted(store, prefix)
        assert records, "no restore.reverted record"
        (record,) = records
        assert json.loads(record["old_value"])["timeout_secs"] == 7.0
        assert json.loads(record["new_value"])["timeout_secs"] == 3.0, record
    finally:
        await plane.stop()
        await store.close()


def _timeout(plane: ControlPlane) -> float | None:
    found = plane.policies.stored(SERVICE)
    return found[0].timeout_secs if found is not None else None


async def _reverted(store: EtcdStore, prefix: str) -> list[dict]:  # type: ignore[type-arg]
    entries, _ = await store.get_prefix(f"{prefix}-audit/")
    found = [json.loads(e.value) for e in entries if e.value]
    return [r for r in found if isinstance(r, dict) and r.get("action") == REVERTED]


async def _until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


async def test_a_second_restore_from_an_older_backup_gets_the_first_restores_record_back(
    etcd: EtcdProcess, prefix: str, tmp_path: Path
) -> None:
    """Two restores, the second from an older backup: etcd then holds neither the first
    restore's ``restore.reverted`` record nor anything of it. The replica that wrote it
    writes it back with what the second restore lacks. Before: the first restore's record
    was gone for good, and only the second's said anything."""
    store = EtcdStore([etcd.endpoint])
    await store.connect()
    plane = ControlPlane(store, prefix=prefix, instance_id="only")
    key = f"{plane.policies.prefix}{SERVICE}"
    try:
        await plane.start()
        await _until(lambda: bool(plane.history.token))
        for timeout, backup in ((3.0, "b0.db"), (5.0, "b1.db"), (7.0, "")):
            await store.commit([Write(key, value(timeout))])
            await _until(lambda t=timeout: _timeout(plane) == t)  # type: ignore[misc]
            if backup:
                await asyncio.to_thread(etcdctl, etcd.endpoint, "snapshot", "save", str(tmp_path / backup))
        await asyncio.to_thread(restore, etcd, tmp_path / "b1.db")
        await _until_records(store, prefix, [(7.0, 5.0)])
        await asyncio.to_thread(restore, etcd, tmp_path / "b0.db")
        await _until_records(store, prefix, [(5.0, 3.0), (7.0, 5.0)])
    finally:
        await plane.stop()
        await store.close()


async def _until_records(store: EtcdStore, prefix: str, wanted: list[tuple[float, float]]) -> None:
    found: list[tuple[float, float]] = []
    for _ in range(3000):
        try:
            records = await _reverted(store, prefix)
        except Exception:  # (etcd starting again)
            records = []
        found = sorted(
            (json.loads(r["old_value"])["timeout_secs"], json.loads(r["new_value"])["timeout_secs"])
            for r in records
        )
        if found == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"restore.reverted records {found}, not {wanted}")
