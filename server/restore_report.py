"""What a restore of etcd from a backup undid, said loudly.

etcd restored from a backup holds each policy as the backup did: a policy edited after the
backup is back at its older value, one deleted since is back in force, one created since is
absent. The store's value is taken (an operator's ``etcdctl put`` is a valid way to change a
policy, and a restore is one too), and the leader writes back only what the store lacks. But
what the restore undid is not left silent: when the leader has written back what it holds,
it compares the policies it held when it found the loss with what the store held when the
loss was found (read at that revision: an operator's write since is not the restore's), logs
each one that differs field by field, and records it in the audit (action
:data:`REVERTED`, the value held as ``old``, the store's as ``new``), so ``mission-control
audit`` shows what the restore took back.

Once: the records are made at the first comparison of a restore and kept until it is over
(a :class:`RevertReport` per restore); each is written create-if-absent, so a write whose
answer was lost (etcd applied it, the leader saw a timeout and tries the restore again)
finds its records stored and writes nothing more, where a second comparison would make new
records (another time, another key) of the same revert.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from mission_control.client.config import policy_from_json, policy_to_json
from mission_control.client.errors import ConfigurationError

from .audit import CONTROL_PLANE, AuditLog, Author, Change
from .store import Entry, Store, StoreUnavailable, WatchCompacted, Write

_log = logging.getLogger("mission_control.server.restore_report")

#: The audit action of a policy the restore took back.
REVERTED = "restore.reverted"
AUTHOR = Author(CONTROL_PLANE, "etcd restored from a backup: its value is in force")


def normalized(service: str, value: bytes) -> bytes:
    """A stored policy as the control plane writes it (a value put by hand may leave out
    what it sets to the default): two values meaning one policy compare equal."""
    try:
        return policy_to_json(policy_from_json(value, service=service)).encode()
    except ConfigurationError:
        return value  # (refused: compared as it is)


def _fields(value: bytes | None) -> dict[str, object]:
    if value is None:
        return {}
    try:
        found = json.loads(value)
    except ValueError:
        return {"(unreadable)": value.decode(errors="replace")}
    return found if isinstance(found, dict) else {"(value)": found}


def changed_fields(held: bytes | None, stored: bytes | None) -> list[str]:
    """Each field that differs between the value held and the store's, as
    ``field: held -> stored`` ("(none)" for an absent field or policy)."""
    before, after = _fields(held), _fields(stored)
    said = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, "(none)"), after.get(name, "(none)")
        if old != new:
            said.append(f"{name}: {json.dumps(old)} -> {json.dumps(new)}")
    return said


def reverted(held: Mapping[str, bytes], stored: Mapping[str, bytes]) -> dict[str, list[str]]:
    """service -> its changed fields, for each policy whose store value is not the one held
    (``held``/``stored``: service -> policy JSON)."""
    found = {}
    for service in sorted(set(held) | set(stored)):
        fields = changed_fields(held.get(service), stored.get(service))
        if fields:
            found[service] = fields
    return found


async def _restored(store: Store, prefix: str, revision: int) -> list[Entry]:
    """The entries under ``prefix`` as of ``revision`` (what the restore brought back, not
    an operator's write since); now when that revision cannot be read (compacted, or of
    another numbering: ahead of the store)."""
    if revision:
        try:
            entries, _ = await store.get_prefix(prefix, revision=revision)
            return entries
        except WatchCompacted:
            pass
        except StoreUnavailable as err:
            if not any(word in str(err) for word in ("future revision", "compacted")):
                raise
        _log.warning("the policies as of revision %d cannot be read: compared with etcd's now", revision)
    entries, _ = await store.get_prefix(prefix)
    return entries


class RevertReport:
    """What one restore took back: compared, logged and its records made once (at the
    first call); the same records are written at every call, create-if-absent, so they
    are stored once however often the restore is tried (an answer lost, the store lost
    its data again before the restore was over)."""

    def __init__(self) -> None:
        #: service -> its changed fields (None: not compared yet).
        self.found: dict[str, list[str]] | None = None
        self._writes: list[Write] = []
        #: The ``restore.reverted`` records among the writes (not their marks).
        self.records: list[Write] = []

    async def report(
        self,
        store: Store,
        prefix: str,
        held: Mapping[str, bytes],
        audit: AuditLog | None,
        revision: int = 0,
    ) -> dict[str, list[str]]:
        """Compare the policies ``held`` (service -> JSON, when the loss was found) with those
        under ``prefix`` in the store as of ``revision`` (the store's when the loss was
        found: what the restore brought back; 0: now), the first time; log and record each
        one the restore took back. Returns them. Raises StoreUnavailable (the records are
        written again at the next call)."""
        if self.found is None:
            self.found, self._writes = await _compare(store, prefix, held, audit, revision)
            bucket = audit.bucket("policy") if audit is not None else None
            self.records = [w for w in self._writes if bucket is not None and w.key.startswith(bucket)]
        if self._writes:
            # create-if-absent records: the commit of records stored already is a conflict
            await store.commit(self._writes, [])
        return self.found


async def _compare(
    store: Store, prefix: str, held: Mapping[str, bytes], audit: AuditLog | None, revision: int
) -> tuple[dict[str, list[str]], list[Write]]:
    """What the store took back of ``held`` (as of ``revision``), logged, and the audit
    writes that record it."""
    entries = await _restored(store, prefix, revision)
    stored = {}
    for entry in entries:
        service = entry.key[len(prefix) :]
        if entry.value is not None:
            stored[service] = normalized(service, entry.value)
    found = reverted(held, stored)
    changes = []
    for service, fields in found.items():
        old, new = held.get(service), stored.get(service)
        what = "deleted" if new is None else "back in force" if old is None else "taken back"
        _log.error(
            "etcd restored from a backup: policy %s %s, etcd's value in force (%s)",
            service,
            what,
            "; ".join(fields),
        )
        changes.append(Change("policy", service, old, new))
    writes = audit.record_writes(changes, AUTHOR, REVERTED) if changes and audit is not None else []
    return found, writes
