"""Exactly one replica decides breaker transitions: the holder of ``<prefix>/leader``.

A replica campaigns by creating the key on an etcd lease (create-if-absent in one
transaction), keeps the lease alive while it leads, and revokes it when it shuts down, so a
successor takes over at once; if the leader dies, its lease expires within ``ttl`` seconds
and the next campaign wins. Every replica watches the key: a follower campaigns the moment
the key is deleted (the lease gone) and learns a new leader's address the moment it is
written, rather than at its next poll (the poll stays, for a watch that broke). The key's
value names the leader's address, which followers use to relay their agents' outcomes.

Every write the leader makes is fenced with the key's create_revision (:meth:`guard`), so a
deposed leader cannot overwrite a newer leader's decision. A leader that loses etcd keeps
deciding from memory (it cannot know whether it was deposed; the fence settles it when etcd
returns).

A replica campaigns only once it has read the store (``ready``): one started while etcd was
out of its reach knows no policy, and leading then it decided every breaker under the
defaults — a HALF_OPEN let out the default ``success_threshold`` of probes (3) where the
service's policy allows 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from .loop_tasks import wait_event
from .store import Entry, Guard, Store, StoreUnavailable, WatchCompacted, WatchEvent, Write

_log = logging.getLogger("mission_control.server.leadership")

FOLLOWER_POLL_SECS = 0.2
#: How long before its lease is known to end a leader stops what only one may do at a time
#: (clocks run at slightly different rates; a renewal is sent a third of the TTL apart).
LEASE_MARGIN_SECS = 0.5


class Leadership:
    def __init__(
        self,
        store: Store,
        prefix: str,
        instance_id: str,
        address: str,
        *,
        ttl: int = 3,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.clock = clock
        #: Whether this replica may lead: it has read the store once (tried at each poll).
        self.ready = ready
        self.store = store
        self.key = f"{prefix.rstrip('/')}/leader"
        self.instance_id = instance_id
        self.address = address
        self.ttl = ttl
        self.on_change = on_change
        self.leading = False
        self.leader_id: str | None = None
        self.leader_address: str | None = None
        self._lease = 0
        self._create_revision = 0
        self._term = 0
        self._last_refresh = 0.0
        #: When the last renewal (or the grant) was sent: the next is due a third of the
        #: TTL after it, however long its answer took.
        self._renew_sent = 0.0
        #: Until when the leader lease is known to hold: the time a grant or keepalive was
        #: sent plus the TTL it got (etcd starts counting later, when it receives it).
        self._valid_until = 0.0
        self._stopped = False
        #: Set (and replaced) whenever the leader key changes: wakes whoever waits.
        self._changed = asyncio.Event()

    @property
    def epoch(self) -> int:
        """Rises with every new leader: the etcd revision that created this one's key."""
        return self._create_revision

    @property
    def term(self) -> int:
        """Tells this replica's takeovers apart (0: it never led) and rises with each: the
        leader key's create revision, or one above the last term when that revision is not
        above it — etcd lost its data and its revisions started over, so a key created
        after a wipe can carry the revision of one created before it."""
        return self._term

    def lease_valid(self, margin: float = LEASE_MARGIN_SECS) -> bool:
        """Whether this replica leads and its lease is known to hold for ``margin`` more:
        a successor can only take the key once the lease has expired in etcd, so what is
        decided only while this holds (probe permits) is never decided by two at once."""
        return self.leading and self.clock() < self._valid_until - margin

    def guard(self) -> Guard | None:
        """The condition that fences a leader's writes, or None when not leading."""
        if not self.leading:
            return None
        return Guard(self.key, self._create_revision, self._lease)

    async def run(self) -> None:
        watcher = asyncio.create_task(self._follow_key(), name="Leadership._follow_key")
        said_unreachable = False
        try:
            while not self._stopped:
                try:
                    if self.leading:
                        await self._hold()
                    else:
                        await self._campaign()
                    if said_unreachable:
                        said_unreachable = False
                        _log.info("etcd answers the leadership again")
                except StoreUnavailable as err:
                    if self.leading and self.clock() - self._last_refresh > self.ttl and not said_unreachable:
                        said_unreachable = True  # once per outage, not at every round
                        _log.warning("cannot reach etcd (%s); deciding from memory, fenced on return", err)
                except Exception:  # one failed round must not end campaigning for good
                    _log.exception("%s: a leadership round failed; trying again", self.instance_id)
                # A leader renews well within its TTL; a follower campaigns when the watch
                # says the key is gone, and polls in case the watch is down.
                await self.wait_change(self.next_round())
        finally:
            watcher.cancel()

    def next_round(self) -> float:
        """Seconds until the next round: a follower's poll, or a leader's next renewal, due a
        third of the TTL after the last was sent. Not a third of the TTL after the round
        ended: a renewal whose answer did not come within the store's timeout (2 s, on a
        starved machine) was then followed by the next one 3 s after it was sent, the whole
        TTL, and the lease lapsed although etcd had taken the renewal."""
        if not self.leading:
            return FOLLOWER_POLL_SECS
        return max(0.0, self._renew_sent + self.ttl / 3 - self.clock())

    async def wait_change(self, timeout: float) -> bool:
        """Wait until the leader key changes or ``timeout``; whether it changed."""
        return await wait_event(self._changed, timeout)

    async def _follow_key(self) -> None:
        while not self._stopped:
            try:
                _, revision = await self.store.get_prefix(self.key)
                async for events in self.store.watch(self.key, revision + 1):
                    self._seen([e for e in events if e.key == self.key])
            except (StoreUnavailable, WatchCompacted):
                pass
            except Exception:  # the poll still elects: a watch bug must not stop that
                _log.exception("watching the leader key failed")
            await asyncio.sleep(FOLLOWER_POLL_SECS)

    def _seen(self, events: list[WatchEvent]) -> None:
        if not events:
            return
        last = events[-1]
        if not self.leading:  # what a leader believes is settled by its own lease and fence
            found = _leader_of(last.value) if last.value is not None else None
            self.leader_id, self.leader_address = found or (None, None)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _campaign(self) -> None:
        entry = await self._learn_leader()
        if entry is not None and self.leader_address == self.address:
            # The key names this replica's own address, which this process holds now: the
            # leader it names is a predecessor that died without resigning (a supervisor
            # restarted it within the lease). Take over now rather than wait for the lease —
            # and never relay to oneself.
            result = await self.store.commit([Write(self.key, None, expected_revision=entry.mod_revision)])
            if result.succeeded:
                _log.warning(
                    "%s: removed the leader key of a predecessor at %s", self.instance_id, self.address
                )
                self.leader_id = self.leader_address = None
        if entry is not None and (self.leader_id is None or not entry.lease):
            # No replica wrote this (a hand edit, garbage, a value without a lease): it names
            # no leader and would never expire, so nobody could lead. Clear it and campaign.
            result = await self.store.commit([Write(self.key, None, expected_revision=entry.mod_revision)])
            if result.succeeded:
                _log.warning(
                    "%s: removed a leader key no replica wrote (%r)", self.instance_id, entry.value[:80]
                )
            self.leader_id = self.leader_address = None
        if self.leader_id is not None:
            return  # somebody leads: nothing to write
        if not self.ready():
            return  # nothing read yet: the next poll tries again
        sent = self._renew_sent = self.clock()
        lease = await self.store.grant_lease(self.ttl)
        value = json.dumps({"instance": self.instance_id, "address": self.address}).encode()
        result = await self.store.commit([Write(self.key, value, expected_revision=0, lease=lease)])
        if not result.succeeded:
            await self.store.revoke_lease(lease)
            await self._learn_leader()
            return
        self._lease, self._create_revision = lease, result.revision
        self._term = max(result.revision, self._term + 1)
        self._last_refresh = self.clock()
        self._valid_until = sent + self.ttl
        self.leader_id, self.leader_address = self.instance_id, self.address
        _log.info("%s is the leader (lease %x)", self.instance_id, lease)
        self._set(True)

    async def _hold(self) -> None:
        sent = self._renew_sent = self.clock()
        left = await self.store.refresh_lease(self._lease)
        if left <= 0:
            _log.warning("%s lost its leader lease", self.instance_id)
            self._set(False)
            return
        self._last_refresh = self.clock()
        self._valid_until = sent + min(left, self.ttl)
        entry = await self.store.get(self.key)
        if entry is None or _instance_of(entry.value) != self.instance_id:
            _log.warning("%s: the leader key is gone", self.instance_id)
            self._set(False)

    async def _learn_leader(self) -> Entry | None:
        entry = await self.store.get(self.key)
        if entry is None:
            self.leader_id = self.leader_address = None
            return None
        self.leader_id, self.leader_address = _leader_of(entry.value) or (None, None)
        return entry

    def fenced(self) -> None:
        """A write was refused by the fence: this replica no longer leads, whatever it
        believed (its lease expired while etcd was away, or the key was replaced)."""
        if self.leading:
            _log.warning("%s: a write was fenced; no longer the leader", self.instance_id)
            self._set(False)

    async def refresh_leader(self) -> None:
        """Re-read who leads (followers call this when their link to the leader breaks)."""
        if not self.leading:
            await self._learn_leader()

    def _set(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        if not leading:
            self.leader_id = self.leader_address = None
        if self.on_change is not None:
            self.on_change(leading)

    async def resign(self) -> None:
        """Give up leadership now (the successor need not wait for the lease to expire)."""
        self._stopped = True
        if self.leading:
            self._set(False)
            with contextlib.suppress(StoreUnavailable):
                await self.store.revoke_lease(self._lease)


def _leader_of(value: bytes) -> tuple[str, str] | None:
    """(instance, address) named by the key's value, or None when it names none."""
    try:
        found = json.loads(value)
        return str(found["instance"]), str(found["address"])
    except (ValueError, KeyError, TypeError):
        return None


def _instance_of(value: bytes) -> str | None:
    try:
        return str(json.loads(value)["instance"])
    except (ValueError, KeyError, TypeError):
        return None
