"""Keeping the claims of changes from outside bounded, as the records are.

A key's claim (``<prefix>-audit/outside/<key>``, see :mod:`.audit_seen`) names the record
last written of a change from outside and the revisions recorded. One is kept per key
ever edited by hand, so without a bound they grow with every key so edited. They are
pruned by the audit's own bounds: a claim whose record was written longer ago than
``--audit-max-age-days`` is deleted, and past ``--audit-max-records`` claims the oldest
(by the time of the record each names) are.

A claim is what keeps a replica that handles a change later than another from recording
it again, once a later write moved the key's mark on. So the prune also moves the
*floor* (``<prefix>-audit/outside-floor``) on, in the same transaction as the deletions:
the newest revision the deleted claims named. A change at or below the floor that no claim
names counts as recorded. Every replica handles the changes its watch delivers in revision
order, so a change below one recorded was handled already by the replica that recorded
it: the floor never stands for a change nobody handled (but one a replica gave up on after
etcd stayed unreachable, which is not recorded either way). A floor naming a revision at
or after its own (put from outside) is not believed.

The count is read at every prune (one count); the claims are read whole only when past the
count bound, or a tenth of the age bound after the last time they were read for age.
"""

from __future__ import annotations

from dataclasses import dataclass

from .audit import AuditLog
from .audit_read import bucket_end
from .audit_seen import Claim, floor_key, parse_floor
from .store import Entry, Write

_INVERT = 10**20 - 1
#: Claims deleted per transaction (etcd bounds the operations of one).
_BATCH = 64


@dataclass(frozen=True, slots=True)
class _Held:
    entry: Entry
    claim: Claim
    #: When the record the claim names was written (ns; 0: not known, a claim put from outside).
    written_ns: int


def written_ns(log: AuditLog, record: str) -> int:
    """When the record ``record`` (a record's key) was written, from its key (0: not known)."""
    _, _, tail = record.removeprefix(log.prefix).partition("/")
    digits = tail[:20]
    return _INVERT - int(digits) if len(digits) == 20 and digits.isdigit() else 0


class ClaimsPruner:
    """Deletes the claims past the audit's bounds, moving the floor on.

    Args:
        log: the records (its retention is the bound, its wall clock tells the age).
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.bucket = f"{log.prefix}outside/"
        #: Claims deleted here.
        self.pruned = 0

    async def prune(self, *, by_age: bool) -> int:
        """Delete the claims past the count bound and, when ``by_age``, those past the age
        bound; returns how many. Raises StoreUnavailable."""
        store, retention = self.log.store, self.log.retention
        end = bucket_end(self.bucket)
        most = retention.max_records
        if not by_age and await store.count(self.bucket, end) <= most:
            return 0
        held = sorted(await self._read(end), key=lambda h: h.written_ns, reverse=True)
        oldest_ns = int((self.log.wall() - retention.max_age_secs) * 1e9)
        doomed = [h for i, h in enumerate(held) if i >= most or h.written_ns < oldest_ns]
        deleted = 0
        for start in range(0, len(doomed), _BATCH):
            done = await self._delete(doomed[start : start + _BATCH])
            if not done:  # a claim or the floor changed meanwhile: the next prune goes on
                break
            deleted += done
        self.pruned += deleted
        return deleted

    async def _read(self, end: str) -> list[_Held]:
        found: list[_Held] = []
        start, more = self.bucket, True
        while more:
            entries, more = await self.log.store.scan(start, end, 500)
            for entry in entries:
                claim = Claim.parse(entry)
                found.append(_Held(entry, claim, written_ns(self.log, claim.record)))
            start = entries[-1].key + "\0" if entries else end
        return found

    async def _delete(self, batch: list[_Held]) -> int:
        """Delete ``batch`` and move the floor on past what its claims named, in one
        compare-and-swap on each; 0 when one changed meanwhile."""
        key = floor_key(self.log)
        entry = await self.log.store.get(key)
        floor = max([parse_floor(entry), *(r for h in batch for r in h.claim.revisions)])
        writes = [Write(h.entry.key, None, h.entry.mod_revision) for h in batch]
        writes.append(Write(key, str(floor).encode(), entry.mod_revision if entry else 0))
        result = await self.log.store.commit(writes)
        return len(batch) if result.succeeded else 0


__all__ = ["ClaimsPruner", "written_ns"]
