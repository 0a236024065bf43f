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


def encode(token: str) -> bytes:
    return json.dumps({"history": token}).encode()


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
        self._due = asyncio.Event()
        #: Called whenever :attr:`token` changed.
        self.on_change: Callable[[], None] = lambda: None

    def apply(self, value: bytes | None) -> None:
        """The token key's value as the store's load or watch said it (None: absent)."""
        token = parse(value)
        if token and token == self._distrusted:
            token = ""
        elif token:
            self._distrusted = ""
        if not token:
            self._due.set()  # a new one is stored
        self._set(token)

    def lost_data(self) -> None:
        """The store lost its data: the token held is of the history lost."""
        self._distrusted = self.token or self._distrusted
        self._set("")

    def _set(self, token: str) -> None:
        if token != self.token:
            self.token = token
            self.on_change()

    async def run(self) -> None:
        """Store a token whenever none good is held (retried while the store is away)."""
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
        if self.token:
            return
        entry = await self._get(self.key)
        found = parse(entry.value) if entry is not None else ""
        if found and found != self._distrusted:
            return  # another replica's, on its way here through the watch
        token = secrets.token_hex(8)
        expected = entry.mod_revision if entry is not None else 0
        if await self._write(self.key, encode(token), expected):
            _log.info("the store's history is %s from now on", token)
        # (lost: another replica stored one; the watch brings it)
