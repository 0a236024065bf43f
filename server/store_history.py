"""Which etcd history this replica's revisions rest on (``Snapshot.history``).

etcd's revisions compare only within one history: a store wiped (or restored from a backup)
starts again below revisions the replicas saw before. A token stored under the prefix names
the history; each replica follows it with the rest of the store, so the token it holds came
through the same load or watch as the revisions it holds, and two replicas holding the same
token hold revisions of one history. The first replica to find no token stores one (a
create-if-absent transaction: the others read the winner's). A replica that finds the store
lost its data holds no token (its revisions are forgotten) and does not take again the one it
held before, should the store still hold it (restored from a backup): it stores a new one
over it (a compare-and-swap on it, so of several replicas that noticed, one writes).

A token held that the store replaces or loses is read as follows (the rule):

- **another valid token** (through the watch or a full load): the store lost its data — a
  wipe the replica did not notice otherwise (restarted with the same cluster id and written
  past the revisions held, the watch reconnecting by itself), another replica having found
  it first and stored a new token. The sync's lost-data path is taken (``on_lost``: revisions
  forgotten, everything reloaded, the leader writes back what the store lacks) and the new
  token taken.
- **absent at a full load**: a wipe and a deletion made while this replica was not watching
  look alike; it is taken as a loss too (the safe side: the lost-data path only writes back
  what the store lacks) and a new token is stored.
- **deleted, or malformed, through the watch** (etcd kept the history and recorded the
  edit — an ``etcdctl del`` or a garbled ``put`` by hand): no loss; the token held is kept
  and written back (create-if-absent, or a compare-and-swap over the garbage). Every
  replica holding it writes back the same token, so the deletion and its re-creation change
  nothing. Should a replica holding none store a new one first, the others see a token
  replaced: a loss, as above (a reload that restores nothing missing).
- **malformed at a full load**: the same, written back.

Only a loss found (here, by the sync or by the leader's check of its keys) mints a new token.

The token also says whether the fleet's shared limits were ever leased in its history
(``"leased": true``): a leader marks it (:meth:`StoreHistory.mark_leased`) before it stores
its first fleet-lease epoch record in the history, so before any lease. The record alone
cannot tell a fresh fleet once it is deleted (by hand, or lost on its own) while every
replica restarts: a leader then finds a marked token and no record, and takes the past for
unknown rather than new (:mod:`.lease_epoch`). The mark stays with the token: written back
with it, never taken off by a value of the same token without it, and written again by
any replica holding it (the leader's next record checks it too) when such a value is put.

What the token cannot tell, and what does:

- **a backup restored** (``etcdctl snapshot restore``): the backup holds the token every
  replica holds, so nothing here changes. A store restored below the revisions held is
  found by the health ping (its revision went back); one written past them before the
  replicas look again is found by the leader's check of the keys it holds
  (:mod:`.held_keys`: a key held at revision R that the store holds below R, or lacks and
  did not hold at R), within its period whatever the revisions say.
- **a new token the watch never delivers**: a replica that found a loss stores its new
  token at the store's next revision, which another replica's watch may have passed
  already (it resumes after the revisions it saw, and a restored store starts below
  them). Each replica reads the token on every health ping (:class:`.held_keys.TokenWatch`);
  another valid token than the one held has the store read again in full, where the
  token replaced is a loss (the rule above). So a replica that mints a token makes every
  other one notice within a ping.

No token held — not read yet, the store away since the start, absent, malformed, just
distrusted — is said as ``""``: not known, never equal to another replica's. The leader
says its token with every snapshot (see :mod:`.leader_states`: a follower compares its
revisions with the leader's only within one history).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable

from .store import Entry, StoreUnavailable

_log = logging.getLogger("mission_control.server.store_history")

#: The token's key, under the control plane's prefix.
KEY = "store-history"
#: The longest token taken (a hand-written value beyond it is malformed, and replaced).
MAX_TOKEN = 64
#: How long after a failed read or write of the token it is tried again.
RETRY_SECS = 1.0


def parse(value: bytes | None) -> str:
    """The token a stored value holds; "" when absent or malformed."""
    if value is None:
        return ""
    try:
        token = json.loads(value).get("history", "")
    except (ValueError, AttributeError):
        return ""
    return token if isinstance(token, str) and 0 < len(token) <= MAX_TOKEN and token.isprintable() else ""


def marked(value: bytes | None) -> bool:
    """Whether a stored value says the fleet was leased in its history."""
    if value is None:
        return False
    try:
        return json.loads(value).get("leased") is True
    except (ValueError, AttributeError):
        return False


def encode(token: str, leased: bool = False) -> bytes:
    fields: dict[str, object] = {"history": token}
    if leased:
        fields["leased"] = True
    return json.dumps(fields).encode()


class StoreHistory:
    """The token of the history this replica's revisions rest on.

    Args:
        key: the token's key.
        get: reads a key now (raises StoreUnavailable).
        write: stores a value if the key's mod revision is the one given (0: absent);
            True when stored (raises StoreUnavailable).
    """

    def __init__(
        self,
        key: str,
        get: Callable[[str], Awaitable[Entry | None]],
        write: Callable[[str, bytes, int], Awaitable[bool]],
    ) -> None:
        self.key = key
        self._get = get
        self._write = write
        #: The token held; "" when none is.
        self.token = ""
        #: The token held before the store lost its data: not taken again.
        self._distrusted = ""
        #: The token the store said the fleet was leased in (see :attr:`leased`).
        self._leased_in = ""
        #: Whether the store's value last seen carries the mark.
        self._store_marked = False
        self._due = asyncio.Event()
        #: Called whenever :attr:`token` changed.
        self.on_change: Callable[[], None] = lambda: None
        #: Called (with why) when the token held was replaced: the store lost its data. The
        #: lost-data path is expected to call :meth:`lost_data` back.
        self.on_lost: Callable[[str], None] = lambda detail: None

    def loss_in(self, entries: list[Entry]) -> str | None:
        """Whether a full load's ``entries`` say the store lost its data: the token held is
        absent or replaced by another (why; None: no sign). Malformed is no sign."""
        if not self.token:
            return None
        entry = next((e for e in entries if e.key == self.key), None)
        if entry is None:
            return f"the store's history token {self.token} is gone"
        found = parse(entry.value)
        if found and found != self.token:
            return f"the store's history token {self.token} was replaced by {found}"
        return None

    def apply(self, value: bytes | None) -> None:
        """The token key's value as the store's load or watch said it (None: absent)."""
        token = parse(value)
        if self.token and token != self.token:
            if not token:  # deleted or garbled by hand: the token held is written back
                self._due.set()
                return
            held = self.token
            self.on_lost(f"the store's history token {held} was replaced by {token}")
            if self.token == held:  # (not called back: distrusted here)
                self.lost_data()
        if token and token == self._distrusted:
            token = ""
        elif token:
            self._distrusted = ""
        if not token:
            self._due.set()  # a new one is stored
        elif marked(value):
            self._leased_in = token
        elif token == self._leased_in:
            self._due.set()  # the same token put without its mark (by hand): the mark goes back
        self._store_marked = bool(token) and marked(value)
        self._set(token)

    @property
    def leased(self) -> bool:
        """Whether the store said the fleet was leased in the history of the token held."""
        return bool(self.token) and self._leased_in == self.token

    def read_directly(self, value: bytes | None) -> None:
        """The token key's value, read now outside the load and the watch (a new leader's
        read as of its takeover): only its mark is taken, for the token held (what else it
        says comes through the watch, in order with the revisions held)."""
        if not self.token or parse(value) != self.token:
            return
        if marked(value):
            self._leased_in = self.token
        elif self._leased_in == self.token:
            self._due.set()  # its mark taken off by hand: written back
        self._store_marked = marked(value)

    async def mark_leased(self) -> None:
        """Say in the store that the fleet is leased in this history (a leader, before it
        stores a fleet-lease epoch record; nothing when it is said already, or no token is
        held: one being replaced is on its way through the watch). Raises StoreUnavailable."""
        held = self.token
        if not held or (self._leased_in == held and self._store_marked):
            return
        entry = await self._get(self.key)
        if entry is None or parse(entry.value) != held:
            return
        if marked(entry.value) or await self._write(self.key, encode(held, True), entry.mod_revision):
            self._leased_in = held
            self._store_marked = True

    def lost_data(self) -> None:
        """The store lost its data: the token held is of the history lost."""
        self._distrusted = self.token or self._distrusted
        self._set("")

    def _set(self, token: str) -> None:
        if token != self.token:
            self.token = token
            self.on_change()

    async def run(self) -> None:
        """Store a token whenever none good is held, or write back the one held when the
        store's is gone or garbled (retried while the store is away)."""
        while True:
            await self._due.wait()
            self._due.clear()
            try:
                await self._store_one()
            except StoreUnavailable as err:
                _log.debug("the store's history token not stored (%s); trying again", err)
                await asyncio.sleep(RETRY_SECS)
                self._due.set()

    async def _store_one(self) -> None:
        entry = await self._get(self.key)
        found = parse(entry.value) if entry is not None else ""
        held = self.token
        if held:
            if found == held and held == self._leased_in and entry is not None and not marked(entry.value):
                # put back without its mark: the mark is written back (else a record then
                # deleted while every replica restarts would leave the past taken for new)
                if await self._write(self.key, encode(held, True), entry.mod_revision):
                    _log.warning(
                        "the store's history token %s was put without its leased mark: marked again", held
                    )
                return
            if found:
                return  # the one held, or another on its way here through the watch (a loss)
            token = held  # deleted or garbled by hand: written back
        elif found and found != self._distrusted:
            return  # another replica's, on its way here through the watch
        else:
            token = secrets.token_hex(8)
        expected = entry.mod_revision if entry is not None else 0
        if await self._write(self.key, encode(token, token == self._leased_in), expected):
            if held:
                _log.warning("the store's history token %s was deleted or garbled: written back", held)
            else:
                _log.info("the store's history is %s from now on", token)
        # (lost: another replica stored one; the watch brings it)
