"""Every write the control plane makes to the store goes through here.

A write ends one of three ways, and they mean different things:

* ``ok``: stored, at ``revision``;
* ``conflict``: a compare-and-swap lost — somebody else changed the key; the stored value
  is the truth and is adopted;
* ``fenced``: the leader fence failed — this replica is no longer the leader. Nothing
  about the key is known, so nothing is adopted: the decision stays pending until either
  this replica leads again (and writes it) or another leader is known (which supersedes it,
  and the stored state is re-read).

Failing to reach the store is :class:`StoreUnavailable`, raised: decisions stay pending and
are written when the store returns.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_from_json, policy_to_json
from mission_control.client.errors import ConfigurationError, StorageFailure
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .audit import CONTROL_PLANE, ENGINE, AuditLog, Author, Change
from .engine import FleetBreakers
from .loop_tasks import wait_event
from .policies import PolicyBook
from .record_age import older_than_held, stored_generation
from .restore_report import RevertReport
from .store import Entry, Guard, LeaseLost, Store, StoreUnavailable, Write
from .unanswered import UnansweredWrites
from .write_versions import TRIES, KeyVersions, Versioned

_log = logging.getLogger("mission_control.server.writes")

RETRY_SECS = 0.5
#: The restore.reverted records a replica keeps to write back after a later restore.
KEPT_REPORTS = 64
#: Breaker transitions stored in one transaction: each is three of its operations (the
#: breaker, its audit record and mark) and up to three compares; etcd takes 128 of each.
PERSIST_BATCH = 20
#: etcd's bound on an operator's write (a forced breaker state, a policy), instead of the
#: store's 2 s: the write is acknowledged only once etcd committed it, which takes an fsync
#: of etcd's log, and on a disk another writer keeps busy that alone may pass 2 s. The
#: engine's own writes keep 2 s (they are retried); an operator's is not, and the CLI
#: waits 10 s for its answer: 8 s leaves it time to hear why a write failed.
OPERATOR_WRITE_SECS = 8.0


def not_taken(err: StoreUnavailable) -> str:
    """What an operator is told of a write etcd did not confirm: that nothing was written
    when etcd refused it, but not when it did not answer in time — a write already sent
    may still be applied (the CLI then says "outcome unknown"). etcd's own text of a refusal
    stays in the log."""
    if "did not answer" in str(err):
        return str(err)
    return "the store did not take the write"


class WriteStatus(enum.Enum):
    OK = "ok"
    CONFLICT = "conflict"
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """How a write ended. ``current``: on a conflict, what each written key holds now."""

    status: WriteStatus
    revision: int = 0
    current: Mapping[str, Entry | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is WriteStatus.OK


class Fence(Protocol):
    """What the writer needs of leadership."""

    instance_id: str
    leader_id: str | None

    @property
    def leading(self) -> bool: ...

    def guard(self) -> Guard | None: ...

    def fenced(self) -> None: ...

    async def refresh_leader(self) -> None:
        """Re-read who leads (only when not leading)."""
        ...


class StateWriter:
    """Writes breakers and policies; keeps the breaker transitions not stored yet.

    Args:
        store: where the truth is kept.
        breaker_key: the store key of a breaker.
        breakers / policies: the in-memory state that is written and adopted.
        on_unavailable: called whenever the store could not be reached.
        clock: monotonic seconds, the engine's.
    """

    def __init__(
        self,
        store: Store,
        breaker_key: Callable[[str], str],
        breakers: FleetBreakers,
        policies: PolicyBook,
        on_unavailable: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock
        self.breaker_key = breaker_key
        self.breakers = breakers
        self.policies = policies
        self.on_unavailable = on_unavailable
        #: Set when replicas share the store; None = this one always decides.
        self.fence: Fence | None = None
        #: Whether the store answered its last health ping (set by the control plane): an
        #: operator write is refused at once while it did not, rather than sent to wait for
        #: its bound and end "outcome unknown".
        self.reachable: Callable[[], bool] = lambda: True
        #: breaker -> decision number: transitions decided and not stored yet.
        self._pending: dict[str, int] = {}
        #: breaker -> the record of its state as decided (with its run and reason): what is
        #: written, however often and however late (see :meth:`decided`).
        self._decided: dict[str, tuple[bytes, int | None, str]] = {}
        self._decisions = 0
        #: Breaker records sent whose answer was lost: a conflict with one is this
        #: replica's own write, stored late (see :mod:`.unanswered`).
        self.unanswered = UnansweredWrites()
        self._wake = asyncio.Event()
        self.superseded = 0
        #: Set when the store lost its data: the leader writes back what it holds.
        self.restore_pending = False
        #: How often the store was found to have lost its data (see :meth:`data_lost`).
        self.losses = 0
        #: The policies held when the loss was found (service -> JSON), until the restore
        #: is done: what it undid is then said (see :mod:`.restore_report`).
        self._held_policies: dict[str, bytes] | None = None
        #: What the restore of the last loss took back, recorded once (see restore_report).
        self._reverts = RevertReport()
        #: The store's revision when the loss was found: the policies the restore brought
        #: back are read as of it (a write since is an operator's, not the restore's).
        self._loss_revision = 0
        #: The ``restore.reverted`` records this replica wrote (key -> value, the newest
        #: :data:`KEPT_REPORTS`): a later restore from an older backup erases them, and
        #: they are written back with what it restores (create-if-absent: once).
        self.reports: dict[str, bytes] = {}
        #: Called when the store's state is to be read again (set by the control plane).
        self.on_reload: Callable[[], None] = lambda: None
        #: Whether a leader that is alive has seen the loss: its link is up and says the
        #: store's history this replica holds since it found the loss (set by the control
        #: plane; see :meth:`_supersede`).
        self.leader_saw_loss: Callable[[], bool] = lambda: True
        #: Called when a write finds that the store lost its data (it restores and reloads).
        self.on_lost_data: Callable[[str], None] = lambda detail: None
        #: Called with each breaker key, value and revision a write of this replica stored
        #: (the sync notes them: a store holding another value there since was wiped).
        self.on_stored: Callable[[str, bytes | None, int], None] = lambda key, value, revision: None
        #: Where every write is recorded, in its own transaction (None: not recorded).
        self.audit: AuditLog | None = None
        #: The candidate policies (shadow mode), whose writes are recorded too.
        self.shadows: PolicyBook | None = None
        #: Called after every recorded write (the audit retention runs then).
        self.on_recorded: Callable[[], None] = lambda: None
        #: Other records held here that a restore writes back, as (key, value): the
        #: fleet-lease epoch record (set by the control plane; see :mod:`.lease_epoch`).
        self.kept_records: Callable[[], list[tuple[str, bytes]]] = lambda: []
        #: The etcd version each recorded key has (what its next write's record names).
        self.versions = KeyVersions(store)

    # -- the primitive ----------------------------------------------------------

    async def commit(
        self,
        writes: Sequence[Write],
        *,
        fenced: bool = False,
        author: Author = ENGINE,
        action: str = "write",
        old: Mapping[str, bytes | None] | None = None,
        timeout: float | None = None,
        authors: Mapping[str, Author] | None = None,
    ) -> WriteResult:
        """All ``writes`` or none, each with its audit record (``author`` and ``action``;
        ``authors``: a key's own author, where it has one; ``old``: the values replaced,
        when memory no longer holds them), which names the key's etcd version after it (see
        :mod:`.write_versions`); ``fenced``: only while this replica leads; ``timeout``: the
        store's bound for it, when not its own. Raises StoreUnavailable."""
        replaced = dict(old or {})
        for _ in range(TRIES):
            result, lost = await self._commit_once(
                writes, fenced, author, action, replaced, timeout, authors or {}
            )
            if not lost:
                return result
            for key in lost:  # written meanwhile, by a write this one was to follow
                entry = result.current.get(key)
                replaced[key] = entry.value if entry is not None else None
        return result

    async def _commit_once(
        self,
        writes: Sequence[Write],
        fenced: bool,
        author: Author,
        action: str,
        old: Mapping[str, bytes | None],
        timeout: float | None,
        authors: Mapping[str, Author],
    ) -> tuple[WriteResult, list[str]]:
        """One transaction, and the keys to send it again on (a compare this writer
        added, not the caller, failed)."""
        guards: list[Guard] = []
        if fenced and self.fence is not None:
            guard = self.fence.guard()
            if guard is None:
                return WriteResult(WriteStatus.FENCED), []
            guards.append(guard)
        try:
            versioned = Versioned(list(writes), {}, frozenset())
            if self.audit is not None:
                versioned = await self.versions.prepare(writes, self._recorded)
            records = self._records(versioned, author, action, old, authors)
            result = await self.store.commit([*versioned.writes, *records], guards, timeout=timeout)
        except LeaseLost:
            raise  # etcd answered: the writer's lease is the caller's to take again
        except StoreUnavailable:
            self.on_unavailable()
            raise
        if result.succeeded:
            self.versions.stored(versioned, result.revision)
            if records:
                self.on_recorded()
            return WriteResult(WriteStatus.OK, result.revision), []
        for guard in guards:
            holder = result.entries.get(guard.key)
            created, lease = (holder.create_revision, holder.lease) if holder else (0, 0)
            if created != guard.create_revision or (guard.lease and lease != guard.lease):
                if self.fence is not None:
                    self.fence.fenced()
                return WriteResult(WriteStatus.FENCED), []
        current = {w.key: result.entries.get(w.key) for w in writes}
        self.versions.seen(current)
        return WriteResult(WriteStatus.CONFLICT, result.revision, current), versioned.lost(current)

    def _records(
        self,
        versioned: Versioned,
        author: Author,
        action: str,
        old: Mapping[str, bytes | None],
        authors: Mapping[str, Author],
    ) -> list[Write]:
        if self.audit is None:
            return []
        changes = []
        for write in versioned.writes:
            change = self.change_of(write.key, write.value, old.get(write.key, self._held(write.key)))
            if change is not None:
                changes.append(replace(change, version=versioned.versions.get(write.key, 0)))
        if authors:  # each change recorded by its own author (its breaker's rule)
            audit = self.audit
            return [w for c in changes for w in audit.record_writes([c], authors.get(c.key, author), action)]
        return self.audit.record_writes(changes, author, action)

    def _recorded(self, key: str) -> bool:
        """Whether a write of ``key`` is recorded (a policy, candidate or breaker)."""
        return self.change_of(key, None, None) is not None

    def change_of(self, key: str, new: bytes | None, old: bytes | None) -> Change | None:
        """What a write of ``key`` changes, for its record (None: not a policy or breaker)."""
        service = self.policies.service_of(key)
        if service is not None:
            return Change("policy", service, old, new, key)
        candidate = self.shadows.service_of(key) if self.shadows is not None else None
        if candidate is not None:
            return Change("shadow", candidate, old, new, key)
        prefix = self.breaker_key("")
        if key.startswith(prefix):
            return Change("breaker", key.removeprefix(prefix), old, new, key)
        return None

    def refuses(self, change: Change) -> bool:
        """Whether the value ``change`` writes is one a policy or candidate key refuses."""
        if change.kind not in ("policy", "shadow") or change.new is None:
            return False
        try:
            policy_from_json(change.new, service=change.name)
        except ConfigurationError:
            return True
        return False

    def _held(self, key: str) -> bytes | None:
        """What the store holds for ``key``, as this replica knows it (the audit's "before")."""
        prefix = self.breaker_key("")
        if key.startswith(prefix):
            return self.breakers.records.get(key.removeprefix(prefix))
        for book in (self.policies, self.shadows):
            service = book.service_of(key) if book is not None else None
            stored = book.stored(service) if book is not None and service is not None else None
            if stored is not None:
                return policy_to_json(stored[0]).encode()
        return None

    # -- breaker transitions decided here ---------------------------------------

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def is_pending(self, name: str) -> bool:
        return name in self._pending

    def decided(self, name: str) -> None:
        """A transition of ``name`` was decided: store it (now, or when possible).

        The record is taken now, not when a write is sent: it says the state as decided,
        with the counts it was decided on. Failures counted while the write waits for etcd
        are the engine's own and stay out of it: a record taken later would carry batches
        whose acknowledgement may yet be lost, to be sent again to whichever replica leads
        next (an engine reading a record takes no count toward a decision from it either:
        :mod:`.stored_counts`). The same record goes with every try."""
        self._decisions += 1
        self._pending[name] = self._decisions
        breakers = self.breakers
        self._decided[name] = (
            breakers.to_record(name),
            breakers.run_of(name),
            breakers.to_proto(name).reason,
        )
        self._wake.set()

    def _settled(self, name: str) -> None:
        """Nothing of ``name`` is pending any more."""
        self._pending.pop(name, None)
        self._decided.pop(name, None)

    def wake(self) -> None:
        self._wake.set()

    def data_lost(self, revision: int = 0) -> None:
        """The store lost its data: what is held here is restored (the leader writes it
        back). A write answered after this was noticed, and sent before, may have gone to
        the data lost: its revision is of that data, not of the store's. ``revision``: the
        store's when the loss was found (0: not known)."""
        self.losses += 1
        if not self.restore_pending or self._held_policies is None:  # (what was held before the first)
            self._held_policies = {p.service: policy_to_json(p).encode() for p in self.policies.all()}
            self._loss_revision = revision
        elif revision and (not self._loss_revision or revision < self._loss_revision):
            self._loss_revision = revision  # restored again, below: as that restore brought back
        self.restore_pending = True
        self.versions = KeyVersions(self.store)  # the revisions held are of the data lost
        self._wake.set()  # a writer with nothing pending waits for no timer

    async def flush(self, timeout: float) -> bool:
        """Wait until every decided transition is stored (or ``timeout``)."""
        deadline = self.clock() + timeout
        while self._pending and self.clock() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        return not self._pending

    async def run(self) -> None:
        """Store pending transitions; retry while the store is away or leadership unsettled."""
        while True:
            busy = self._pending or self.restore_pending
            await wait_event(self._wake, RETRY_SECS if busy else None)
            self._wake.clear()
            try:
                if self.fence is not None and not self.fence.leading:
                    await self._supersede()
                    continue
                if self.restore_pending:
                    await self._restore()
                names = sorted(self._pending)
                for start in range(0, len(names), PERSIST_BATCH):
                    await self._persist_some(names[start : start + PERSIST_BATCH])
            except StoreUnavailable as err:
                _log.warning("%d breaker transitions not stored yet (%s)", len(self._pending), err)

    async def _persist_some(self, names: list[str]) -> None:
        """Store the pending transitions of ``names`` in one transaction (a burst of
        thousands is some hundreds of transactions, not one per breaker). Each ends as
        :meth:`_persist` ends it: stored (``ok``), or still pending (``fenced``); on a
        ``conflict`` nothing was written, and each is written again alone, so that the one
        whose compare-and-swap lost is told apart (it adopts the stored state, or finds its
        own write stored) from those that go through."""
        batch = [
            (name, self._pending[name], *self._decided[name][:2]) for name in names if name in self._pending
        ]
        if len(batch) <= 1:
            for name, *_ in batch:
                await self._persist(name)
            return
        writes, authors = [], {}
        for name, _, record, run in batch:
            key = self.breaker_key(name)
            writes.append(Write(key, record, self.breakers.revisions.get(name, 0)))
            authors[key] = Author(CONTROL_PLANE, self._decided[name][2])  # the rule's reason
            self.unanswered.sent(name, record, run)  # kept should the answer be lost
        losses = self.losses
        result = await self.commit(writes, fenced=True, action="breaker.transition", authors=authors)
        if result.ok and losses != self.losses:
            return  # stored in the data the store lost: still pending (written again)
        if result.ok:
            for name, decision, record, run in batch:
                self.unanswered.answered(name)
                self.breakers.stored(name, result.revision, run)
                self.breakers.records[name] = record
                self.on_stored(self.breaker_key(name), record, result.revision)
                if self._pending.get(name) == decision:  # else a newer decision is to be written
                    self._settled(name)
        elif result.status is WriteStatus.CONFLICT:
            for name, *_ in batch:  # nothing applied: each alone now (its records sent kept)
                await self._persist(name)

    async def _persist(self, name: str) -> None:
        decision = self._pending.get(name)
        if decision is None:
            return
        key = self.breaker_key(name)
        expected = self.breakers.revisions.get(name, 0)
        record, run, reason = self._decided[name]
        author = Author(CONTROL_PLANE, reason)  # the rule's reason
        losses = self.losses
        self.unanswered.sent(name, record, run)  # kept should its answer be lost
        result = await self.commit(
            [Write(key, record, expected)], fenced=True, author=author, action="breaker.transition"
        )
        if result.ok and losses != self.losses:
            return  # stored in the data the store lost: still pending (written again)
        if result.ok:
            self.unanswered.answered(name)
            self.breakers.stored(name, result.revision, run)
            self.breakers.records[name] = record
            self.on_stored(key, record, result.revision)
            if self._pending.get(name) == decision:  # else a newer decision is to be written
                self._settled(name)
        elif result.status is WriteStatus.CONFLICT:
            entry = result.current.get(key)
            own, landed_run = self.unanswered.own(name, entry.value if entry else None)
            self.unanswered.answered(name)
            if own and entry is not None:
                self._landed(name, entry, landed_run, decision)
                return
            if entry is not None and self.breakers.resumed(name, entry.value, entry.mod_revision):
                # the record it was forgotten at, left behind by a failed deletion: written over
                _log.info("breaker %s: its record not deleted when forgotten is written over", name)
                self._wake.set()
                return
            _log.info("breaker %s changed elsewhere; adopting the stored state", name)
            self._went_back(name, entry)
            self._adopt(name, entry)

    def _landed(self, name: str, entry: Entry, run: int | None, decision: int) -> None:
        """A compare-and-swap lost to this replica's own earlier write, whose answer was
        lost: it is stored (at ``entry.mod_revision``), not a change made elsewhere. The
        state held here, decided since, stays and is written on top of it."""
        _log.info(
            "breaker %s: an earlier write of this replica was stored (revision %d), its answer lost",
            name,
            entry.mod_revision,
        )
        self.breakers.stored(name, entry.mod_revision, run)
        if self._pending.get(name) == decision and self._decided[name][0] == entry.value:
            self._settled(name)  # nothing decided since
        else:
            self._wake.set()

    def seen_stored(self, name: str, value: bytes | None, revision: int) -> None:
        """The watch shows ``value`` stored for ``name`` at ``revision`` while a decision on
        it is pending. A record this replica sent whose answer is lost (or not come yet)
        is its own write stored, as :meth:`_landed` finds on a lost compare-and-swap: what
        is held here rests on that revision from now on, and a state decided since is pushed
        again saying so —
        while etcd is away, a follower that read the write tells its agents a state
        decided here since only when it rests on a revision at least as late
        (``leader_states``)."""
        own, run = self.unanswered.own(name, value)
        if not own or value is None or revision <= self.breakers.revisions.get(name, 0):
            return
        decision = self._pending.get(name)
        if decision is None:
            return
        self.breakers.stored(name, revision, run)
        self.breakers.records[name] = value
        if self._decided[name][0] == value:
            # nothing decided since: agents hold what was stored (the watch commonly beats
            # the answer: a push here would double every transition's push)
            self._settled(name)
            return
        self._wake.set()  # what was decided since is written on top of it
        self.breakers.restate(name)

    async def _supersede(self) -> None:
        """Not leading: once another replica leads, its state wins over what is pending here."""
        fence = self.fence
        if fence is None or fence.leader_id in (None, fence.instance_id):
            return
        if self.restore_pending:
            # The leader known may be from before the loss: its key went with the data, or
            # came back with a backup restored (its lease too, with a fresh TTL: a dead
            # leader then stays named until that lapses). Hand the restore over only to a
            # leader that is alive and has seen the loss (it says the history minted since);
            # else what is held here stays, and is written back should this replica lead.
            await fence.refresh_leader()
            if fence.leader_id in (None, fence.instance_id) or not self.leader_saw_loss():
                return
            # The leader restores what the store lost, or not: what is held here since
            # the loss is not kept any more; etcd's state is read again.
            self.restore_pending = False
            self._held_policies = None  # (the leader says what the restore undid)
            self._reverts = RevertReport()
            self.on_reload()
        for name in sorted(self._pending):
            entry = await self.store.get(self.breaker_key(name))
            _log.warning("breaker %s: a decision not stored is superseded by %s", name, fence.leader_id)
            self._went_back(name, entry)
            if entry is not None and entry.mod_revision == self.breakers.revisions.get(name, 0):
                # memory holds a decision on top of the revision last seen: the stored
                # state replaces it although that revision has not changed
                self.breakers.revisions.pop(name, None)
            self.superseded += 1
            self._adopt(name, entry)

    def _went_back(self, name: str, entry: Entry | None) -> None:
        """A stored breaker (read just now) older than the revision held: a key's revision
        never decreases, so the store lost its data while this replica could not see it. What it knows of the
        old data is dropped (so the stored state is adopted) and everything is read again."""
        held = self.breakers.revisions.get(name, 0)
        if entry is None or not 0 < entry.mod_revision < held:
            return
        detail = f"breaker {name} stored at revision {entry.mod_revision}, {held} held"
        _log.error("the store lost its data (%s)", detail)
        self.breakers.revisions.pop(name, None)
        self.on_lost_data(detail)

    def _adopt(self, name: str, entry: Entry | None) -> None:
        self._settled(name)
        self.unanswered.answered(name)  # what the store holds replaces what was sent
        try:
            self.breakers.adopt(name, entry.value if entry else None, entry.mod_revision if entry else 0)
        except Exception as err:  # any broken record (parse errors too)
            self.breakers.revisions[name] = entry.mod_revision if entry else 0
            if self.fence is not None and not self.fence.leading:
                # superseded: the leader overwrites it (deciding again here would keep it
                # pending for ever, since a follower never writes). What is held here does
                # not rest on that revision: a decision taken while leading and never
                # stored stays behind the leader's state (``leader_states``), not above it.
                self.breakers.unread[name] = self.breakers.revisions[name]
                _log.error("stored breaker %s is malformed (%s); the leader settles it", name, err)
                return
            _log.error("stored breaker %s is malformed (%s); it will be overwritten", name, err)
            self.decided(name)  # what was decided here replaces it

    # -- operator writes (acknowledged only once stored) ------------------------

    async def set_breaker_state(
        self, name: str, state: BreakerState, reason: str, author: Author = ENGINE
    ) -> pb.Breaker:
        """Force a breaker's state; returns the stored breaker. Raises StorageFailure
        when the store cannot take the write (nothing changes then)."""
        key = self.breaker_key(name)
        action = "breaker." + ("reset" if state is BreakerState.CLOSED else state.name.lower())
        self._refuse_unreachable("set breaker state")
        for attempt in range(10):
            if attempt:  # another writer won: let it finish before reading and trying again
                await asyncio.sleep(min(0.1, 0.002 * 2**attempt))
            before = self.breakers.to_record(name) if self.breakers.find(name) is not None else None
            breaker = self.breakers.draft(name)
            breaker.force(self.clock(), state, reason)
            record = self.breakers.record_of(breaker)
            expected = self.breakers.revisions.get(name, 0)
            losses = self.losses
            try:
                result = await self.commit(
                    [Write(key, record, expected)],
                    author=author,
                    action=action,
                    old={key: before},
                    timeout=OPERATOR_WRITE_SECS,
                )
            except StoreUnavailable as err:
                raise StorageFailure("etcd", "set breaker state", str(err)) from err
            if losses != self.losses:
                continue  # answered from the data the store lost: written again, to what it holds
            if not result.ok:
                self._adopt(name, result.current.get(key))
                continue
            if not (self.is_pending(name) and self.breakers.revisions.get(name, 0) >= result.revision):
                # (else the watch showed this write before its answer came, and a transition
                # was decided over it since: that one is still to be written on top)
                self._settled(name)
            self.breakers.adopt(name, record, result.revision)
            self.on_stored(key, record, result.revision)
            # What this write stored, even if a newer write has been applied meanwhile.
            written = json_format.Parse(record, pb.Breaker(), ignore_unknown_fields=True)
            written.revision = result.revision
            return written
        raise StorageFailure("etcd", "set breaker state", "too many concurrent changes; retry")

    async def put_policy(
        self, policy: ServicePolicy, expected_revision: int = 0, author: Author = ENGINE
    ) -> int | None:
        """Store a validated policy; returns its revision, or None when
        ``expected_revision`` no longer matches. Raises StorageFailure."""
        key = self.policies.key(policy.service)
        value = policy_to_json(policy).encode()
        write = Write(key, value, expected_revision or None)
        result = await self._policy_write("put policy", [write], author, "policy.put")
        return result.revision if result.ok else None

    async def delete_policy(self, service: str, author: Author = ENGINE) -> bool:
        """Delete a stored policy; False when there was none. Raises StorageFailure."""
        if self.policies.stored(service) is None:
            return False
        write = Write(self.policies.key(service), None)
        await self._policy_write("delete policy", [write], author, "policy.delete")
        return True

    async def write_policies(
        self, writes: Sequence[Write], author: Author = ENGINE, action: str = "config.import"
    ) -> WriteResult:
        """Several policy writes in one transaction (a config import, a rollback).
        Raises StorageFailure."""
        return await self._policy_write(action.replace(".", " "), writes, author, action)

    async def _policy_write(
        self, what: str, writes: Sequence[Write], author: Author, action: str
    ) -> WriteResult:
        self._refuse_unreachable(what)
        losses = self.losses
        try:
            result = await self.commit(writes, author=author, action=action, timeout=OPERATOR_WRITE_SECS)
        except StoreUnavailable as err:
            _log.warning("%s not written: %s", what, err)
            raise StorageFailure("etcd", what, not_taken(err)) from err
        if losses != self.losses:  # answered from the data the store lost: not kept
            _log.warning("%s not written: the store lost its data meanwhile", what)
            raise StorageFailure("etcd", what, "the store lost its data while writing; nothing was kept")
        if result.ok:
            for write in writes:
                self.policies.apply(write.key, write.value, result.revision)
        return result

    def _refuse_unreachable(self, what: str) -> None:
        if not self.reachable():
            detail = "etcd is unreachable (health NOT_SERVING): nothing was sent"
            raise StorageFailure("etcd", what, detail)

    async def record_lease_epoch(self, key: str, value: bytes) -> bool:
        """Store the fleet-lease epoch record (see :mod:`.lease_epoch`), only while this
        replica leads; True when stored. Raises StoreUnavailable."""
        result = await self.commit([Write(key, value)], fenced=True, action="fleet.lease_epoch")
        return result.ok

    async def record_history(self, key: str, value: bytes, expected_revision: int) -> bool:
        """Store the store's history token (see :mod:`.store_history`) if ``key``'s mod
        revision is ``expected_revision`` (0: absent), by any replica; True when stored.
        Raises StoreUnavailable."""
        result = await self.commit([Write(key, value, expected_revision)], action="store.history")
        return result.ok

    # -- after the store lost its data ------------------------------------------

    async def _restore(self) -> None:
        losses = self.losses
        restored = await self.restore()
        if losses != self.losses:
            return  # lost again meanwhile: restored again from the start
        if self.fence is None or self.fence.leading:  # else fenced midway: again when leading
            if self._held_policies is not None:
                reverts = self._reverts
                await reverts.report(
                    self.store, self.policies.prefix, self._held_policies, self.audit, self._loss_revision
                )
                self._keep_reports(reverts.records)
            if losses != self.losses:
                return
            self.restore_pending = False
            self._held_policies = None
            self._reverts = RevertReport()  # (recorded: the next loss is compared anew)
            _log.warning("restored %d keys the store had lost", restored)

    async def restore(self) -> int:
        """Write back every breaker and policy held here whose key is absent (the store was
        wiped), and the other records kept (:attr:`kept_records`, fenced as breakers are);
        a key written meanwhile is left alone, but for a breaker record of an earlier state
        than the one held (a backup's, from before transitions and operator writes the fleet
        has seen since: :mod:`.record_age`): the state held is live truth, written over it.
        Returns how many were written. Raises StoreUnavailable."""
        writes = [
            Write(self.policies.key(p.service), policy_to_json(p).encode(), 0) for p in self.policies.all()
        ]
        names = self.breakers.names()
        runs = {self.breaker_key(n): (n, self.breakers.run_of(n)) for n in names}
        writes += [Write(self.breaker_key(n), self.breakers.to_record(n), 0) for n in names]
        kept = [Write(key, value, 0) for key, value in self.kept_records()]
        reports = [Write(key, value, 0) for key, value in self.reports.items()]
        writes += kept + reports
        fenced = {write.key for write in kept + reports}
        restored, losses = 0, self.losses
        for write in writes:
            breaker = runs.get(write.key)
            result = await self.commit(
                [write], fenced=breaker is not None or write.key in fenced, action="restore"
            )
            if result.status is WriteStatus.CONFLICT and breaker is not None:
                result = await self._over_older(write, result.current.get(write.key))
            if result.status is WriteStatus.FENCED:
                return restored
            if losses != self.losses:
                return restored  # lost again meanwhile: restored again from the start
            if result.ok and breaker is not None:
                self.breakers.stored(breaker[0], result.revision, breaker[1])
            if result.ok and write.key in self.reports:
                _log.error(
                    "the audit record %s of an earlier restore was erased (a restore from an older "
                    "backup): written back",
                    write.key,
                )
            restored += result.ok
        return restored

    def _keep_reports(self, written: list[Write]) -> None:
        for write in written:
            if write.value is not None:
                self.reports[write.key] = write.value
        while len(self.reports) > KEPT_REPORTS:
            del self.reports[next(iter(self.reports))]

    async def _over_older(self, write: Write, entry: Entry | None) -> WriteResult:
        """A breaker's record found in the store in place of the one held: written over when
        it is of an earlier state (what a backup restored holds: a lower generation, or the
        same one reached earlier, see :mod:`.record_age`); else left alone."""
        if entry is None or not older_than_held(entry.value, write.value):
            return WriteResult(WriteStatus.CONFLICT)
        stored, held = stored_generation(entry.value), stored_generation(write.value)
        _log.warning(
            "%s: the store holds generation %d (revision %d), %d held: the state held is written over it",
            write.key,
            stored,
            entry.mod_revision,
            held,
        )
        over = Write(write.key, write.value, entry.mod_revision)
        return await self.commit([over], fenced=True, action="restore", old={write.key: entry.value})
