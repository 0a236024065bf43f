"""Follow the store: load every policy and breaker, then apply its watch.

A compacted watch, a lost leadership or a store that lost its data reloads everything: a
store whose revision went backwards, whose cluster id changed (wiped, or replaced) or that
holds a key at a lower revision than the one held here, or at the same revision with
another value (wiped while this replica could not see it, and written past every revision
it saw since) is reloaded without dropping what is held, and the leader writes it back. A
value that does not parse — under ``policies/`` or ``breakers/`` — is refused, counted
and shown (``PolicyBook.errors``), and never stops the rest; when nothing good is held
for its key (a restart), the key's earlier revisions are read back to the newest good one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from mission_control.client.breaker import BreakerState

from .engine import FleetBreakers
from .last_good import FROM_RECORDS, Pick
from .policies import PolicyBook
from .record_age import older_than_held
from .refused_held import overwrite_refused
from .seen_values import SeenValues
from .store import Entry, Store, StoreUnavailable, WatchCompacted
from .writes import StateWriter

_log = logging.getLogger("mission_control.server.sync")

#: How many earlier revisions of a bad key are read back, looking for a good one.
HISTORY_DEPTH = 20

#: How long a load applies entries before it lets the event loop turn. Applying one costs
#: about 0.2 ms of CPU (15,000 took 3 CPU seconds): a big prefix applied in one go held the
#: loop for seconds, so the leader lease (3 s) lapsed and the load timeout of the start
#: could not fire. A slice is measured on the clock, not counted in entries: 250 entries
#: were 50 ms on an idle machine but a second at load 30, and a lease keep-alive or a ping,
#: which needs several turns of the loop, then outlasted its 2 s bound.
LOAD_SLICE_SECS = 0.01


class StoreSync:
    """Keeps ``policies`` and ``breakers`` equal to the store.

    Args:
        on_store: called with True once loaded, False whenever the store is away.
        on_loaded: called after every full load (the first, and every reload).
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        policies: PolicyBook,
        breakers: FleetBreakers,
        writer: StateWriter,
        on_store: Callable[[bool], None],
        on_loaded: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        #: What a load's slices are timed by (``LOAD_SLICE_SECS``): a virtual clock makes
        #: where a load lets the loop turn depend on nothing but the schedule.
        self.clock = clock
        self.prefix = prefix.rstrip("/") + "/"
        self.breakers_prefix = self.prefix + "breakers/"
        self.policies = policies
        self.breakers = breakers
        # Until a load has applied the stored policies, a breaker made here takes the
        # defaults as a stand-in: the policy that replaces it is no lowering.
        breakers.lowered.policies_unread()
        self.writer = writer
        self.on_store = on_store
        self.on_loaded = on_loaded
        self.loaded = asyncio.Event()
        self._resync = asyncio.Event()
        #: The newest store revision seen, and the cluster that served it.
        self.revision = 0
        self.cluster_id = 0
        #: The newest revision whose changes, and every earlier one's, were applied here (by
        #: a load or the watch; a ping's revision says nothing about what was applied).
        self.delivered = 0
        self._keep_absent = False
        self._converge = False
        self.wipes = 0
        #: The value seen at each policy's and breaker's newest revision.
        self._seen = SeenValues()
        # (a write's own answer too: the watch may never bring it, the store cut off after it)
        writer.on_stored = self._seen.note
        #: Called each time the store is found to have lost its data (after the state's own
        #: reload is asked for): other followers of the store reload too.
        self.lost_data_listeners: list[Callable[[], None]] = []
        #: Candidate policies in shadow mode (see :mod:`.shadow`), when kept.
        self.shadows: PolicyBook | None = None
        #: Which keys are audit records, and what to call for a policy or breaker change
        #: seen with no record at its revision (made outside the control plane).
        self.is_record: Callable[[str], bool] = lambda key: False
        self.on_outside: Callable[[str, bytes | None, int], None] = lambda key, value, revision: None
        #: The revision of the last full load: the watch follows from the one after it.
        self.load_revision = 0
        #: Other keys followed: key -> called with each value (None: deleted).
        self.records: dict[str, Callable[[bytes | None], None]] = {}
        #: Keys of :attr:`records` told None also when a full load finds them absent.
        self.absent_told: set[str] = set()
        #: Other signs, in a full load's entries, that the store lost its data: each says
        #: why (None: no sign). Asked before anything read is applied.
        self.loss_signs: list[Callable[[list[Entry]], str | None]] = []
        #: Where a bad policy key's last good value is looked for when etcd compacted its
        #: earlier revisions: the refused entry -> what was in force before it (None: not
        #: a policy's key).
        self.recorded_good: Callable[[Entry], Awaitable[Pick | None]] | None = None

    def reload(self) -> None:
        """Read everything again (the watch is restarted after it) and hold what the store
        holds: a breaker it lacks that is not CLOSED here and not pending is reset too, even
        one never stored (a state decided here that the store never had)."""
        self._converge = True
        self._resync.set()

    def resync(self) -> None:
        """Read everything again (the watch is restarted after it), as after a compacted
        watch: a sign of a loss the read finds (``loss_signs``, a key older than held) is
        handled as one; what the store holds is followed, nothing held is reset."""
        self._resync.set()

    async def check(self) -> None:
        """Ping the store and notice one that lost its data: its revision went backwards
        or its cluster id changed. What is held is kept, the revisions known are forgotten
        (they belong to the old data), everything is reloaded and the writer restores what
        is missing. Raises StoreUnavailable."""
        seen = self.revision  # before asking: a change seen meanwhile is not a step back
        status = await self.store.ping()
        known, self.cluster_id = self.cluster_id, status.cluster_id
        if status.revision >= seen and known in (0, status.cluster_id):
            self.revision = max(self.revision, status.revision)
            return
        self._lost_data(status.revision, seen, f"cluster {status.cluster_id:x} after {known:x}")
        self.reload()

    def _lost_data(self, revision: int, seen: int, detail: str) -> None:
        _log.error("the store lost its data (revision %d after %d, %s): restoring", revision, seen, detail)
        self.wipes += 1
        self.revision = revision
        self.delivered = 0
        self._seen.clear()
        self.breakers.lost_revisions()
        self.policies.forget_revisions()
        self._keep_absent = True
        self.writer.data_lost(revision)
        for listener in list(self.lost_data_listeners):
            listener()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                self._resync.clear()  # a reload asked for from here on is not lost
                revision = await self._load_all()
                self.load_revision = revision
                self.loaded.set()
                self.on_store(True)
                self.on_loaded()
                backoff = 0.1
                await self._follow(revision)
            except WatchCompacted as err:
                _log.warning("%s; reloading everything", err)
            except StoreUnavailable as err:
                self.on_store(False)
                # Said once per outage; the retries every few seconds say nothing new.
                log = _log.warning if backoff == 0.1 and self.loaded.is_set() else _log.debug
                log("store unavailable (%s); serving from memory", err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _follow(self, revision: int) -> None:
        """Apply the watch's changes until it ends or a reload is asked for."""

        async def watch() -> None:
            async for events in self.store.watch(self.prefix, revision + 1):
                # A control plane writes a record in the same transaction as its change, and
                # etcd never splits one revision's events over two responses.
                recorded = {e.mod_revision for e in events if e.value is not None and self.is_record(e.key)}
                for event in events:
                    self.revision = max(self.revision, event.mod_revision)
                    refused = not self.apply(event.key, event.value, event.mod_revision)
                    name = self._breaker_of(event.key)
                    if refused and name is not None:  # the leader writes over it (refused_held)
                        overwrite_refused(self.writer, [name])
                    if event.mod_revision not in recorded and not self.is_record(event.key):
                        self.on_outside(event.key, event.value, event.mod_revision)
                    self.delivered = max(self.delivered, event.mod_revision)

        watching = asyncio.create_task(watch())
        resync = asyncio.create_task(self._resync.wait())
        try:
            await asyncio.wait({watching, resync}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watching, resync):
                task.cancel()
        if watching.done() and not watching.cancelled():
            watching.result()  # raises what ended the watch
        _log.info("reloading everything from the store")

    async def _load_all(self) -> int:
        # Before reading: a big prefix takes a while to read, and a revision the health
        # check or a watch saw meanwhile is newer than the read's, not a step back.
        # A breaker stored at a revision the store is below now was lost with its data
        # (wiped with the same cluster id, and not yet written past that revision).
        seen = max(self.revision, max(self.breakers.revisions.values(), default=0))
        entries, revision = await self.store.get_prefix(self.prefix)
        if revision < seen:
            self._lost_data(revision, seen, "noticed while loading")
        else:
            went_back = self._went_back(entries, revision)
            signs = (sign(entries) for sign in self.loss_signs)
            sign = next((detail for detail in signs if detail is not None), None)
            if went_back:
                self._lost_data(revision, seen, f"{went_back} is older than the revision held")
            elif sign is not None:
                self._lost_data(revision, seen, sign)
        self.revision = max(self.revision, revision)
        # After a loss of data, what the store lacks is kept until the leader restored it.
        keep_absent = self._keep_absent or self.writer.restore_pending
        self._keep_absent = False
        seen_policies, seen_breakers, seen_shadows = set(), set(), set()
        absent = set(self.absent_told)
        sliced = self.clock()
        # Policies before everything else (keys come in key order, ``breakers/`` first): a
        # breaker first made by this load takes its service's policy as stored, not the
        # defaults, whose timeout would count as one lowered to the policy's
        # (``LoweredTimeouts``) and hold a takeover's permits that much longer.
        entries = sorted(entries, key=lambda entry: self.policies.service_of(entry.key) is None)
        for entry in entries:
            if self.policies.service_of(entry.key) is None:
                self.breakers.lowered.policies_read()  # (all of them applied: they came first)
            if self.clock() - sliced >= LOAD_SLICE_SECS:
                await asyncio.sleep(0)
                sliced = self.clock()
            absent.discard(entry.key)
            if not self.apply(entry.key, entry.value, entry.mod_revision) and not self._holds(entry.key):
                await self._earlier_good(entry)
            service = self.policies.service_of(entry.key)
            if service is not None:
                seen_policies.add(service)
            if self.shadows is not None and self.shadows.service_of(entry.key) is not None:
                seen_shadows.add(self.shadows.service_of(entry.key))
            name = self._breaker_of(entry.key)
            if name is not None:
                seen_breakers.add(name)
        # (once no earlier good value could be put in force; of keys the store holds now)
        self.breakers.lowered.policies_read()  # (a store that holds nothing but policies)
        overwrite_refused(self.writer, sorted(seen_breakers))
        self.delivered = max(self.delivered, revision)
        for key in sorted(absent):
            self.records[key](None)
        if keep_absent:  # the store lost it: the writer restores it
            self._drop_absent_candidates(seen_shadows, revision)  # (not written back)
            if self._converge and not self.writer.restore_pending:
                self._resync.set()  # the restore was handed over meanwhile: read again
            return revision
        converge, self._converge = self._converge, False  # a load that kept all keeps asking
        for policy in self.policies.all():
            if policy.service not in seen_policies:  # deleted while we were not watching
                self.policies.apply(self.policies.key(policy.service), None, revision)
        self._drop_absent_candidates(seen_shadows, revision)
        for name in self.breakers.names():
            if name in seen_breakers or self.breakers.revisions.get(name, 0) > revision:
                continue  # (stored after the read, while the load let others run)
            held = self.breakers.find(name)
            unstored = converge and held is not None and held.state is not BreakerState.CLOSED
            if self.breakers.revisions.get(name, 0) > 0 or unstored:
                self.apply(self.breakers_prefix + name, None, revision)  # deleted meanwhile
        return revision

    def _drop_absent_candidates(self, seen: set[str | None], revision: int) -> None:
        """Candidates the store does not hold are dropped: cleared while this replica was
        not watching, or lost with the store's data (a restore writes back none: every
        replica holds the store's)."""
        for candidate in self.shadows.all() if self.shadows is not None else ():
            if candidate.service not in seen:
                self.shadows.apply(self.shadows.key(candidate.service), None, revision)  # type: ignore[union-attr]

    def went_back(self, key: str, mod_revision: int, at: int) -> bool:
        """Whether the store, read at revision ``at``, holds ``key`` at a revision lower
        than the one held here: a key's revision never decreases, so the store lost its
        data (wiped and restarted with its old configuration, the same cluster id) and has
        been written past every revision seen here since."""
        held = self._held_revision(key)
        return 0 < mod_revision < held <= at

    def lost_data(self, detail: str) -> None:
        """The store lost its data (noticed by a write): restore and reload, as :meth:`check`."""
        self._lost_data(self.revision, self.revision, detail)
        self.reload()

    def _went_back(self, entries: list[Entry], at: int) -> str | None:
        for entry in entries:
            if self.went_back(entry.key, entry.mod_revision, at):
                return f"{entry.key} at revision {entry.mod_revision}"
            if self._seen.rewritten(entry.key, entry.value, entry.mod_revision):
                return f"{entry.key} holds another value at revision {entry.mod_revision}"
        return None

    def _held_revision(self, key: str) -> int:
        service = self.policies.service_of(key)
        if service is not None:
            return self.policies.revision_of(service)
        name = self._breaker_of(key)
        return self.breakers.revisions.get(name, 0) if name is not None else 0

    def apply(self, key: str, value: bytes | None, revision: int) -> bool:
        """Apply one stored value; False when it was refused as malformed."""
        if self.policies.service_of(key) is not None or self._breaker_of(key) is not None:
            self._seen.note(key, value, revision)
        if self.policies.service_of(key) is not None:
            before = self.policies.reloads_failed
            self.policies.apply(key, value, revision)
            return self.policies.reloads_failed == before
        if self.shadows is not None and self.shadows.service_of(key) is not None:
            self.shadows.apply(key, value, revision)
            return True  # a bad candidate is refused and shown; no earlier one is looked for
        name = self._breaker_of(key)
        if name is None:
            follow = self.records.get(key)
            if follow is not None:
                follow(value)
            return True
        known = max(self.breakers.revisions.get(name, 0), self.breakers.forgotten_at(name))
        if value is not None and revision <= known:
            return True  # our own write, or older (or of a breaker forgotten since)
        if value is None and 0 < revision < self.breakers.revisions.get(name, 0):
            return True  # a deletion before the write held, heard late (the write is newer)
        if value is None:
            self.policies.cleared(key)
        if value is None and self.breakers.find(name) is None:
            return True  # a forgotten breaker's key deleted: nothing to start over
        if self.writer.is_pending(name):
            self.writer.seen_stored(name, value, revision)  # its own write, answered late?
            return True  # the pending write settles it (see writes.StateWriter)
        if value is not None and self.writer.restore_pending and self._older_than_held(name, value):
            return True  # a backup's record: the restore writes the state held over it
        try:
            self.breakers.adopt(name, value, revision)
        except Exception as err:  # any parse error: refused and shown, never stops the watch
            held = self.breakers.revisions.get(name, 0)
            kept = f"the last good value (revision {held})" if held else "the state held in memory"
            self.policies.refused(key, f"malformed breaker record ({err}); in force: {kept}", revision)
            return False
        self.policies.cleared(key)
        return True

    def _older_than_held(self, name: str, value: bytes) -> bool:
        held = self.breakers.find(name) is not None
        return held and older_than_held(value, self.breakers.to_record(name))

    def _breaker_of(self, key: str) -> str | None:
        return key.removeprefix(self.breakers_prefix) if key.startswith(self.breakers_prefix) else None

    def _holds(self, key: str) -> bool:
        """Whether a good value of ``key`` is held in memory."""
        service = self.policies.service_of(key)
        if service is not None:
            return self.policies.stored(service) is not None
        name = self._breaker_of(key)
        return name is None or self.breakers.revisions.get(name, 0) > 0

    async def _earlier_good(self, entry: Entry) -> None:
        """Put the newest good earlier revision of a bad key in force (as of its current
        revision, so that a compare-and-swap on it still works)."""
        at = entry.mod_revision
        for _ in range(HISTORY_DEPTH):
            try:
                earlier = await self.store.get(entry.key, revision=at - 1)
            except WatchCompacted:
                break
            if earlier is None:
                return
            if self._put_in_force(entry, earlier):
                return
            at = earlier.mod_revision
        await self._recorded_in_force(entry)

    async def _recorded_in_force(self, entry: Entry) -> None:
        """etcd compacted the key's earlier revisions: its audit records still hold them."""
        found = await self.recorded_good(entry) if self.recorded_good else None
        if found is None:
            return
        if found.value is not None:
            revision = entry.mod_revision
            self.policies.keep_earlier(entry.key, found.value, found.revision, revision, FROM_RECORDS)
        else:
            self.policies.restate(entry.key, entry.mod_revision, f"the defaults ({found.why})")

    def _put_in_force(self, entry: Entry, earlier: Entry) -> bool:
        if self.policies.service_of(entry.key) is not None:
            return self.policies.keep_earlier(
                entry.key, earlier.value, earlier.mod_revision, entry.mod_revision
            )
        name = self._breaker_of(entry.key)
        assert name is not None
        try:
            self.breakers.adopt(name, earlier.value, entry.mod_revision)
        except Exception:  # also bad: look further back
            return False
        kept = f"the last good value (revision {earlier.mod_revision})"
        self.policies.restate(entry.key, entry.mod_revision, kept)
        return True
