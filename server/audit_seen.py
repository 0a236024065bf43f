"""Recording a change from outside as the watch delivered it: its own value and revision.

A change seen in the watch is recorded with the value the event carries, at the event's
revision, even when the key changed again before it is handled (a control-plane write
right after an ``etcdctl put`` moves the key, and its mark, on at once). Its "before" is
the key's value at the revision before (read from etcd's history; once compacted away,
the value last recorded, when the key's mark still names a change before it).

Every such record also updates the key's *claim* (``<prefix>-audit/outside/<key>``): the
revisions of the newest changes from outside recorded for that key (at most
:data:`CLAIMED`), naming the record last written. The record and the claim are written
in one compare-and-swap on the claim, so however many replicas see the change, one
record is written. When the key's mark still names a change before the event, the mark
moves on to the record too (a compare-and-swap on it as well): the record is then the
key's last, as for any recorded change. When a later write moved the mark on already, the
mark keeps naming that write's record (written again as it is, in a compare-and-swap: its
etcd version counts every recorded change, see :mod:`.last_good`), and the claim names the
record instead (what tells a record a control plane wrote, see
:meth:`.audit_read.AuditReader.provenance`).

Claims are pruned with the records (see :mod:`.audit_claims`); a change at or below the
*floor* the prune moves on, that no claim names, counts as recorded.

A claim that does not parse (put from outside) counts as empty, and one naming a revision
at or after its own is not believed there: the change is recorded, and the claim written
over. A value the watch delivers is recorded as it is (the record decodes it, replacing what
is not UTF-8); how much one holds is etcd's bound on a request.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from .audit import OUTSIDE, AuditLog, Author, Change
from .audit_read import encode
from .store import Entry, WatchCompacted, Write

#: The revisions kept in a key's claim: a replica that handles an event later than this
#: many newer changes from outside of the same key finds it claimed or records it again.
CLAIMED = 64
#: A claim longer than this is not read (put from outside): it counts as empty.
_MAX_CLAIM = 16 * 1024


@dataclass(frozen=True, slots=True)
class Claim:
    """What a key's claim says: the record last written and the revisions recorded."""

    record: str = ""
    revisions: tuple[int, ...] = ()

    @staticmethod
    def parse(entry: Entry | None) -> Claim:
        if entry is None or len(entry.value) > _MAX_CLAIM:
            return Claim()
        try:
            data = json.loads(entry.value)
            record, revisions = data["record"], data["revisions"]
        except (ValueError, TypeError, KeyError, RecursionError):
            return Claim()
        if not isinstance(record, str) or not isinstance(revisions, list):
            return Claim()
        # A claim names changes made before it was written, never one after (put from
        # outside, it cannot keep a change to come from being recorded).
        told = sorted({r for r in revisions if type(r) is int and 0 < r < entry.mod_revision})
        return Claim(record, tuple(told[-CLAIMED:]))

    def adding(self, record: str, revision: int) -> bytes:
        revisions = sorted({*self.revisions, revision})[-CLAIMED:]
        return json.dumps({"record": record, "revisions": revisions}).encode()


def floor_key(log: AuditLog) -> str:
    return f"{log.prefix}outside-floor"


def parse_floor(entry: Entry | None) -> int:
    """The revision at or below which a change no claim names counts as recorded."""
    if entry is None:
        return 0
    text = entry.value.decode(errors="replace").strip()
    if not text.isdigit() or len(text) > 20:
        return 0
    floor = int(text)
    return floor if floor < entry.mod_revision else 0  # a floor never names changes to come


class SeenChanges:
    """Records the changes from outside the watch delivered.

    Args:
        log: the records.
        change_of: what a write of a key changes (None: not a recorded key).
        refuses: whether the control plane refuses the value a change writes.
    """

    def __init__(
        self,
        log: AuditLog,
        change_of: Callable[[str, bytes | None, bytes | None], Change | None],
        refuses: Callable[[Change], bool],
    ) -> None:
        self.log = log
        self.change_of = change_of
        self.refuses = refuses

    async def record(self, key: str, value: bytes | None, revision: int) -> bool | None:
        """Record the change of ``key`` to ``value`` at ``revision``: True when recorded
        here, False when recorded already (by another replica, or a compare after a start),
        None when it is no change recorded. Raises StoreUnavailable."""
        log = self.log
        for _ in range(8):  # each lost compare-and-swap means another write came first
            mark = await log.store.get(log.mark_of(key))
            entry = await log.store.get(log.claim_of(key))
            claim = Claim.parse(entry)
            # Read after the claim: a claim pruned since moved the floor on before.
            floor = parse_floor(await log.store.get(floor_key(log)))
            described = log.described(mark)[1] if mark is not None else 0
            if revision in claim.revisions or described == revision or revision <= floor:
                return False
            change = self.change_of(key, value, await self._before(key, revision, mark, described))
            if change is None:
                return None
            change = replace(change, version=await self._version(key, revision))
            now = log.wall()
            record_key = log.record_key(change.kind, now, secrets.token_hex(4))
            refused = change.new is not None and self.refuses(change)
            verb = "refused" if refused else "put" if change.new is not None else "delete"
            record = log._record(change, Author(OUTSIDE), f"{OUTSIDE}.{verb}", now)
            record.revision = revision
            writes = [
                Write(record_key, encode(record), 0),
                Write(
                    log.claim_of(key), claim.adding(record_key, revision), entry.mod_revision if entry else 0
                ),
            ]
            if described < revision:  # the key's last change: its mark names the record
                writes.append(log.mark_write(change, record_key, mark.mod_revision if mark else 0, revision))
            elif mark is not None:  # written again, as it is: its version counts every record
                named, _, present = log.described(mark)
                again = f"{'' if present else '-'}{named} {described}".encode()
                writes.append(Write(mark.key, again, mark.mod_revision))
            result = await log.store.commit(writes)
            if result.succeeded:
                log.outside_seen += 1
                return True
        return False

    async def _before(self, key: str, revision: int, mark: Entry | None, described: int) -> bytes | None:
        """The key's value before ``revision``."""
        try:
            before = await self.log.store.get(key, revision=revision - 1)
        except WatchCompacted:
            if mark is None or described > revision or not self.log.described(mark)[2]:
                return None  # not known: told as none
            found = await self.log.store.get(self.log.described(mark)[0])
            record = self.log.parse(found) if found is not None else None
            return record.new_value.encode() if record is not None and record.new_value else None
        return before.value if before is not None else None

    async def _version(self, key: str, revision: int) -> int:
        """The key's etcd version after the change (0: not known, compacted away)."""
        try:
            entry = await self.log.store.get(key, revision=revision)
        except WatchCompacted:
            return 0
        return entry.version if entry is not None and entry.mod_revision == revision else 0
