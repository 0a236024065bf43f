"""The audit records the retention bound never deletes: those a key's last good value is
read back from (:mod:`.last_good`) once etcd compacted the key's earlier revisions.

For each key its mark says is present, the record the mark names is kept, whatever its
age and however many records of its kind are newer: it holds the value the key was last
recorded with, and a change from outside is recorded with that value as its old one. So
is, for a policy, the record written with the mark's first version: when it records the
key's creation (put from outside), the mark counts every change recorded since. A
policy whose stored value is refused also keeps its records from the newest good value
on: the good value's own, and those of the refused values written after it. Everything
else is pruned as before; what is kept this way is bounded by the keys that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .audit import AuditLog, Change
from .audit_read import bucket_end


class KeptRecords:
    """Finds the records a prune keeps.

    Args:
        log: the records.
        change_of: what a write of a key changes (None: not a recorded key).
        refuses: whether the control plane refuses the value a change writes.
        refused_keys: the policy keys whose stored value is refused now.
    """

    def __init__(
        self,
        log: AuditLog,
        change_of: Callable[[str, bytes | None, bytes | None], Change | None],
        refuses: Callable[[Change], bool],
        refused_keys: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self.log = log
        self.change_of = change_of
        self.refuses = refuses
        self.refused_keys = refused_keys

    async def find(self) -> frozenset[str]:
        """The keys of the records to keep. Raises StoreUnavailable."""
        marks, _ = await self.log.store.get_prefix(self.log.marks)
        kept: set[str] = set()
        born: set[int] = set()  # the revisions policy marks were created at
        for mark in marks:
            record, _, present = self.log.described(mark)
            if present and record.startswith(self.log.prefix):
                kept.add(record)
                change = self.change_of(self.log.key_of_mark(mark.key), None, None)
                if change is not None and change.kind == "policy":
                    born.add(mark.create_revision)
        kept.update(await self.born_with(born))
        for key in self.refused_keys():
            kept.update(await self.since_good(key))
        return frozenset(kept)

    async def born_with(self, born: set[int]) -> list[str]:
        """The policy records written with a mark's first version (at one of ``born``):
        with them, the mark of a key put from outside counts its changes since it was
        created (:func:`.last_good.born_with`). Raises StoreUnavailable."""
        if not born:
            return []
        bucket = self.log.bucket("policy")
        found, start, end, more = [], bucket, bucket_end(bucket), True
        while more:
            entries, more = await self.log.store.scan(start, end, 500, keys_only=True)
            found += [
                e.key for e in entries if e.create_revision == e.mod_revision and e.mod_revision in born
            ]
            start = entries[-1].key + "\0" if entries else end
        return found

    async def since_good(self, key: str) -> list[str]:
        """The records of ``key`` from the newest that wrote a good value on (all of them
        when none did). Raises StoreUnavailable."""
        change = self.change_of(key, None, None)
        if change is None:
            return []
        bucket = self.log.bucket(change.kind)
        most = await self.log.store.count(bucket, bucket_end(bucket))
        found = []
        for entry, record in reversed(await self.log.stored_of(change.kind, change.name, most)):
            found.append(entry.key)
            written = Change(change.kind, change.name, None, record.new_value.encode() or None, key)
            if not self.refuses(written):  # a good value, or a deletion: nothing before counts
                break
        return found


__all__ = ["KeptRecords"]
