"""The leader's check that etcd still holds every policy and breaker it holds.

A store restored from a backup (``etcdctl snapshot restore``, same cluster id) keeps the
history token the backup held, and once written past every revision the replicas saw
their watches reconnect as if nothing happened: a key written after the backup is gone
and no event ever says so. So the leader reads, every :data:`CHECK_SECS`, the keys of
``policies/`` and ``breakers/`` with their mod revisions only (a keys-only range, in pages
of :data:`PAGE_KEYS`, no value read), and compares them with what it holds:

- a key held at revision R found at a lower mod revision: a key's revision never goes
  down in one history, so the store lost its data;
- a key held at R that the store lacks: either deleted since (an ``etcdctl del`` the
  watch is bringing) or lost. The key is read as it was at R: a store that kept its
  history holds it there at mod revision R; one that lost it holds nothing there, or
  another write. A revision compacted away tells nothing (the key is looked at again at
  the next check).

Only keys held at a revision the store had reached when the check began are compared
(one stored since may be read by a page before it). The other way round, a policy the
store holds at a revision this replica's watch had delivered when the check began, but
that it did not hold then (nor refused as malformed), is a loss too: the watch brought
every write up to that revision, and a key's revision never goes down in one history —
a backup restored holds a policy deleted after it was taken, at its old revision.

A loss found is handled as a wipe (``StoreSync.lost_data``: revisions forgotten,
everything reloaded, the leader writes back every key the store lacks with a
create-if-absent write, so a key written meanwhile, by hand or by another replica, is
left alone; a breaker record of an earlier state than the one held is written over:
:mod:`.record_age`).

Cost, for 15,000 breakers: 16 ranges of at most 1,000 keys (about 63 bytes each with their
revisions: 0.95 MB read from etcd per check) and a dict of 15,000 revisions built and
compared in the leader's loop: 44 ms of the leader's CPU per check, under 1 % of a core
at one check every 5 s (``python -m bench.held_keys_check``: median of 7 checks on a
2-core machine under load; the wall time, 0.4 s, is spent waiting on etcd, between
pages). The hot path (agents deciding calls) does not take part.

:class:`TokenWatch` is the other half: on every health ping each replica reads the
history token (:mod:`.store_history`); another valid token than the one held means
another replica found a loss and stored a new one, which this replica's watch may have
resumed past (a watch resumes after the revisions it saw, and a restored store writes
the new token at a revision it already saw). The store is then read again in full, and
that read tells the loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .store import Store, StoreUnavailable, WatchCompacted
from .store_history import StoreHistory, parse

_log = logging.getLogger("mission_control.server.held_keys")

#: Seconds between two checks (a loss is found within this and one check's reads).
CHECK_SECS = 5.0
#: Keys per keys-only range.
PAGE_KEYS = 1000
#: Keys absent from the store read at their revision in one check, at most.
MOST_ABSENT_READ = 32


def prefix_end(prefix: str) -> str:
    """The end of the range holding every key that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class HeldKeysCheck:
    """Compares the keys held with the store's, every :attr:`every` seconds while
    :attr:`active` says so.

    Args:
        store: the store.
        prefixes: the key prefixes compared (each ends with ``/``).
        held: key -> the revision held now (0 or absent: not stored as far as known).
        active: whether to check now (leading, loaded, no restore pending).
        losses: a number that changes whenever a loss is handled (a check across one is
            dropped).
        on_loss: called with why when the store lost keys it held.
        unheld: the policy keys whose absence from what is held says a loss: the prefix,
            the revision the watch delivered through and the keys held or refused (each
            read before the store is, so a deletion meanwhile tells nothing).
    """

    def __init__(
        self,
        store: Store,
        prefixes: list[str],
        held: Callable[[], dict[str, int]],
        active: Callable[[], bool],
        losses: Callable[[], int],
        on_loss: Callable[[str], None],
        every: float = CHECK_SECS,
        unheld: Callable[[], tuple[str, int, set[str]]] | None = None,
    ) -> None:
        self.store = store
        self.prefixes = prefixes
        self.held = held
        self.active = active
        self.losses = losses
        self.on_loss = on_loss
        self.every = every
        self.unheld = unheld
        #: Checks made, and losses found.
        self.checks = 0
        self.found = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if not self.active():
                continue
            try:
                await self.check()
            except StoreUnavailable as err:
                _log.debug("held keys not checked (%s)", err)

    async def check(self) -> str | None:
        """One comparison; why the store lost data (None: nothing found). Raises
        StoreUnavailable."""
        losses = self.losses()
        known = self.unheld() if self.unheld is not None else None
        at = (await self.store.ping()).revision
        stored: dict[str, int] = {}
        for prefix in self.prefixes:
            await self._read(prefix, stored)
        self.checks += 1
        if known is not None:
            policies, delivered, held_then = known
            for key, at_rev in stored.items():
                if key.startswith(policies) and 0 < at_rev <= min(delivered, at) and key not in held_then:
                    return self._lost(losses, f"{key} stored at revision {at_rev}, delivered and not held")
        absent: list[tuple[str, int]] = []
        for key, held in self.held().items():
            if not 0 < held <= at:
                continue
            found = stored.get(key)
            if found is None:
                absent.append((key, held))
            elif found < held:
                return self._lost(losses, f"{key} stored at revision {found}, {held} held")
        suspects: list[tuple[str, int]] = []
        for key, held in absent[:MOST_ABSENT_READ]:
            try:
                then = await self.store.get(key, revision=held)
            except WatchCompacted:
                continue  # tells nothing: looked at again next time
            if then is None or then.mod_revision != held:
                suspects.append((key, held))
        now = self.held() if suspects else {}
        for key, held in suspects:
            if now.get(key) == held:  # (else its deletion came through the watch meanwhile)
                return self._lost(losses, f"{key} held at revision {held} is not in the store's history")
        return None

    async def _read(self, prefix: str, into: dict[str, int]) -> None:
        start, end = prefix, prefix_end(prefix)
        while True:
            entries, more = await self.store.scan(start, end, PAGE_KEYS, keys_only=True)
            for entry in entries:
                into[entry.key] = entry.mod_revision
            if not more or not entries:
                return
            start = entries[-1].key + "\0"

    def _lost(self, losses: int, detail: str) -> str | None:
        if losses != self.losses() or not self.active():
            return None  # handled meanwhile (what is held was read again)
        self.found += 1
        self.on_loss(detail)
        return detail


class TokenWatch:
    """Reads the history token on each health ping; another valid token than the one
    held asks for a full read of the store (``resync``), once per token found."""

    def __init__(self, store: Store, history: StoreHistory, resync: Callable[[], None]) -> None:
        self.store = store
        self.history = history
        self.resync = resync
        self._asked = ""

    async def check(self) -> bool:
        """Whether a full read was asked for. Raises StoreUnavailable."""
        entry = await self.store.get(self.history.key)
        found = parse(entry.value) if entry is not None else ""
        held = self.history.token
        if not held or not found or found == held or found == self._asked:
            return False
        self._asked = found
        _log.warning("the store holds history %s, %s held here: reading the store again", found, held)
        self.resync()
        return True
