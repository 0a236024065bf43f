"""The background part of the audit: records the changes made from outside, moves the
records of an earlier version, and keeps the retention bound.

A change from outside is found two ways. Watching, a change with no mark at its
revision (:class:`.sync.StoreSync` calls :meth:`AuditKeeper.outside`): it is recorded
with the event's own value and revision, even when the key changed again before (see
:mod:`.audit_seen`). Starting, or after the watch was reloaded or fell behind (etcd
compacted the revisions it had not delivered, or more changes waited than it holds),
every key whose revision is not its mark's: a change made while no replica watched.
Then only the key's value now is recorded, at its revision, from the value last
recorded: the changes between, which nobody saw, are not (the record's etcd version
tells how many there were). Either way the record is written in a compare-and-swap on
the key's mark or claim, so several replicas make one record.

A write of the control plane triggers the prune. So do changes from outside, so that a
fleet edited only by hand keeps its bound too: once the records this replica wrote of them
since the last prune are a tenth of the count bound (one at least), or when one is written
a tenth of the age bound or more after the last prune (a few hand edits never cost a
prune each, and the records past a bound are never more than a tenth of it). The claims
of changes from outside are pruned with them, by the same bounds (see :mod:`.audit_claims`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial

from .audit import AuditLog, Change, Retention
from .audit_claims import ClaimsPruner
from .audit_kept import KeptRecords
from .audit_seen import Claim, SeenChanges
from .store import Entry, StoreUnavailable, WatchCompacted, Write

_log = logging.getLogger("mission_control.server.audit")
#: The values of the changes waiting to be recorded are held up to this many bytes (beyond:
#: every key is compared with its mark instead, as when more changes wait than are held).
MAX_WAITING_BYTES = 64 * 1024 * 1024


def prune_due(retention: Retention, unpruned: int, since: float) -> bool:
    """Whether changes from outside trigger a prune: ``unpruned`` of them recorded since the
    last prune, ``since`` seconds after it ended (0: none ended yet)."""
    return unpruned >= max(1, retention.max_records // 10) or since >= retention.max_age_secs / 10


class AuditKeeper:
    """Records changes seen from outside, and keeps the bound.

    Args:
        log: the records.
        change_of: what a write of a key changes (None: not a recorded key).
        prune_delay: seconds between a recorded write and the pruning it triggers, so a
            burst of writes is pruned once.
        prune_interval: seconds at least between two prunes: the bound may be passed
            for that long.
        refuses: whether the control plane refuses the value a change writes.
        refused_keys: the policy keys whose stored value is refused now (their records
            from the last good value on are kept: see :mod:`.audit_kept`).
    """

    def __init__(
        self,
        log: AuditLog,
        change_of: Callable[[str, bytes | None, bytes | None], Change | None],
        prune_delay: float = 0.2,
        prune_interval: float = 5.0,
        refuses: Callable[[Change], bool] = lambda change: False,
        refused_keys: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self.log = log
        self.change_of = change_of
        #: Whether the control plane refuses the value a change writes (it stays out of force).
        self.refuses = refuses
        self.prune_delay = prune_delay
        self.prune_interval = prune_interval
        #: What a prune keeps whatever its age: what a last good value is read back from.
        self.kept = KeptRecords(log, change_of, refuses, refused_keys)
        self._prune = asyncio.Event()
        self.seen = SeenChanges(log, change_of, refuses)
        self._outside: asyncio.Queue[tuple[str, bytes | None, int]] = asyncio.Queue(maxsize=10_000)
        self._waiting_bytes = 0
        self._compare_all = asyncio.Event()
        #: The revision of the last full load: the watch delivers every change after it.
        self._loaded_at = 0
        #: Changes the watch delivered were let go (too many waited): compare them all.
        self._compare_everything = False
        #: Changes from outside handled here (recorded here or by another replica).
        self.outside_changes = 0
        self.pruned = 0
        #: The claims of changes from outside, pruned by the same bounds (see
        #: :mod:`.audit_claims`), and when (loop time) they were last read for age.
        self.claims = ClaimsPruner(log)
        self._claims_aged_at: float | None = None
        #: Records of changes from outside written here since the last prune began, and
        #: when (loop time) the last prune ended (None: none yet).
        self._outside_unpruned = 0
        self._pruned_at: float | None = None

    def recorded(self) -> None:
        """A record was written: prune soon."""
        self._prune.set()

    def outside(self, key: str, value: bytes | None, revision: int) -> None:
        """``key`` changed at ``revision`` with no mark beside it: record it."""
        if self.change_of(key, value, None) is None:
            return
        size = len(value or b"")
        if self._waiting_bytes + size > MAX_WAITING_BYTES:
            self._let_go()
            return
        try:
            self._outside.put_nowait((key, value, revision))
        except asyncio.QueueFull:  # beyond: compare every key with its mark instead
            self._let_go()
        else:
            self._waiting_bytes += size

    def _let_go(self) -> None:
        self._compare_everything = True
        self._compare_all.set()

    def loaded(self, revision: int = 0) -> None:
        """Everything was read again at ``revision`` (a start, a reload; 0: not known):
        changes made while nobody watched are found by comparing every key with its mark.
        Those after ``revision`` are the watch's, which delivers every one (see
        :meth:`compare_all`)."""
        self._loaded_at = revision
        self._compare_all.set()

    async def run(self) -> None:
        await asyncio.gather(self._prune_loop(), self._outside_loop(), self._compare_loop())

    async def _prune_loop(self) -> None:
        await self._retrying("audit records of an earlier version not moved yet", self.log.move_legacy)
        self._prune.set()  # what an earlier run left beyond the bound
        said = False
        while True:
            await self._prune.wait()
            await asyncio.sleep(self.prune_delay)
            self._prune.clear()
            self._outside_unpruned = 0
            try:
                self.pruned += await self.log.prune(self.kept.find)
                await self._prune_claims()
            except StoreUnavailable as err:
                # told once per outage: the retries every second say nothing new
                (_log.debug if said else _log.info)("audit records not pruned yet (%s)", err)
                said = True
                self._prune.set()
                await asyncio.sleep(1.0)
            else:
                said = False
                self._pruned_at = asyncio.get_running_loop().time()
                await asyncio.sleep(self.prune_interval)

    async def _prune_claims(self) -> None:
        """Prune the claims past the count bound, and past the age bound once a tenth of it
        passed since they were last read for age. Raises StoreUnavailable."""
        now = asyncio.get_running_loop().time()
        aged_at = self._claims_aged_at
        by_age = aged_at is None or now - aged_at >= self.log.retention.max_age_secs / 10
        await self.claims.prune(by_age=by_age)
        if by_age:
            self._claims_aged_at = now

    def _recorded_outside(self) -> None:
        """A change from outside was recorded here: prune when due (see the module's docstring)."""
        self._outside_unpruned += 1
        pruned_at = self._pruned_at
        since = asyncio.get_running_loop().time() - pruned_at if pruned_at is not None else 0.0
        if prune_due(self.log.retention, self._outside_unpruned, since):
            self.recorded()

    async def _retrying(self, what: str, work: Callable[[], object]) -> None:
        for attempt in range(8):
            try:
                await work()  # type: ignore[misc]
                return
            except StoreUnavailable as err:
                _log.info("%s (%s)", what, err)
                await asyncio.sleep(0.2 * 2**attempt)

    async def _outside_loop(self) -> None:
        while True:
            key, value, revision = await self._outside.get()
            self._waiting_bytes -= len(value or b"")
            await self._retrying(
                f"change of {key} at {revision} not recorded yet",
                partial(self.record_seen, key, value, revision),
            )

    async def record_seen(self, key: str, value: bytes | None, revision: int) -> None:
        """Record the change of ``key`` to ``value`` the watch delivered at ``revision``.
        Raises StoreUnavailable."""
        recorded = await self.seen.record(key, value, revision)
        if recorded is None:
            return
        text = "%s changed from outside the control plane (revision %d)%s"
        if recorded:
            _log.warning(text, key, revision, "")
            self._recorded_outside()
        else:
            _log.info(text, key, revision, ": recorded already")
        self.outside_changes += 1

    async def _compare_loop(self) -> None:
        while True:
            await self._compare_all.wait()
            self._compare_all.clear()
            upto = 0 if self._compare_everything else self._loaded_at
            self._compare_everything = False
            await self._retrying("keys not compared with their marks yet", partial(self.compare_all, upto))

    async def compare_all(self, upto: int = 0) -> int:
        """Compare every recorded key with its mark, both read at one revision; returns
        how many changes from outside were found. With ``upto`` (the revision of a load the
        watch follows), a key changed after it is left to the watch, which delivers that
        change with its revision: a deletion found here has none, and recorded both ways
        it would be recorded twice (a hand delete made while a replica starts).
        Raises StoreUnavailable."""
        entries, _ = await self.log.store.get_prefix(self.log.marks.removesuffix("audited/"))
        marks = {self.log.key_of_mark(e.key): e for e in entries if self.log.is_record(e.key)}
        found = 0
        for entry in entries:
            if not self.log.is_record(entry.key) and self.change_of(entry.key, entry.value, None):
                mark = marks.pop(entry.key, None)
                if not upto or entry.mod_revision <= upto:
                    found += await self._compare(entry.key, entry, mark)
        for key, mark in marks.items():  # marked as present, and gone
            if not upto or not await self._present_at(key, upto):
                found += await self._compare(key, None, mark)
        return found

    async def _present_at(self, key: str, revision: int) -> bool:
        """Whether ``key`` was present at ``revision`` (False once compacted away: its
        deletion is recorded here then, as when no watch delivers it)."""
        try:
            return await self.log.store.get(key, revision=revision) is not None
        except WatchCompacted:
            return False

    async def _compare(self, key: str, entry: Entry | None, mark: Entry | None) -> bool:
        if entry is None and (mark is None or not self.log.described(mark)[2]):
            return False  # absent, as recorded
        if entry is not None and mark is not None and self.log.described(mark)[1] == entry.mod_revision:
            return False  # recorded
        change = self.change_of(key, entry.value if entry else None, await self._last(mark))
        if change is None:
            return False
        if entry is not None:  # read with the change: what the last good value is told by
            change = replace(change, version=entry.version)
        revision = entry.mod_revision if entry is not None else 0
        text = "%s %s changed from outside the control plane (revision %d)%s"
        refused = change.new is not None and self.refuses(change)
        also = await self._claiming(key, revision)
        if await self.log.record_outside(
            change, revision, mark.mod_revision if mark else 0, refused=refused, also=also
        ):
            _log.warning(text, change.kind, change.name, revision, "")
            self._recorded_outside()
        else:
            _log.info(text, change.kind, change.name, revision, ": recorded by another replica")
        self.outside_changes += 1
        return True

    async def _claiming(self, key: str, revision: int) -> Callable[[str], list[Write]]:
        """The claim write of a change found by a compare (in a compare-and-swap on the
        claim as read now): a replica that handles its event later finds it recorded."""
        if not revision:  # a deletion: its revision is not known
            return lambda record: []
        entry = await self.log.store.get(self.log.claim_of(key))
        claim, expected = Claim.parse(entry), entry.mod_revision if entry else 0
        return lambda record: [Write(self.log.claim_of(key), claim.adding(record, revision), expected)]

    async def _last(self, mark: Entry | None) -> bytes | None:
        """The value last recorded, from the record the mark names."""
        if mark is None or not self.log.described(mark)[2]:
            return None
        entry = await self.log.store.get(self.log.described(mark)[0])
        record = self.log.parse(entry) if entry is not None else None
        return record.new_value.encode() if record is not None and record.new_value else None
