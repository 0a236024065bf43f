"""The etcd version a recorded write gives its key, known before the write is sent.

A control plane's audit record is written in the transaction of the change it describes,
so the key's etcd ``version`` after the change (what a last good value is read back by,
see :mod:`.last_good_versions`) cannot come from that transaction's answer: it is made
certain by the transaction's own compare instead. A key's ``mod_revision`` fixes its
``version`` (etcd never changes one without the other), so a write that compares the
key's ``mod_revision`` with R produces the version the key had at R, plus one:

* a put compared with 0 (the key must be absent) creates the key: version 1;
* a put compared with R: the version at R (known from this replica's own writes and the
  keys read with a transaction's failed compare, else read once now), plus one;
* a put compared with nothing (last writer wins) is compared with the revision the key
  is read at now; when another write comes in between, it is sent again on what that
  write left (the caller sees no conflict it did not ask for);
* a delete records version 0: the key no longer exists, and a key put again later starts
  over at version 1 with a new ``create_revision``. A deletion's record describes the end
  of one life of the key: read back for a later life of it, it is set aside with every
  record before it (they describe revisions before that life's creation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from .store import Entry, Store, Write

#: How many times a last-writer-wins write is sent again when another write comes in
#: between the read of its key and the write.
TRIES = 10
#: Keys whose (mod_revision, version) are held: past it, what is held is dropped (and read
#: again when needed).
MAX_HELD = 50_000


@dataclass(frozen=True, slots=True)
class Versioned:
    """Writes as sent, with the version each recorded key has after them."""

    writes: list[Write]
    #: key -> its etcd version after the write (0: not known, or deleted).
    versions: dict[str, int]
    #: The keys whose compare was added here (the caller asked for none).
    compared: frozenset[str]

    def lost(self, current: Mapping[str, Entry | None]) -> list[str]:
        """After a failed transaction (``current``: what each key holds now): the keys
        whose added compare failed, when every compare the caller asked for held — the
        write is to be sent again on what they hold now. Empty: the caller's own
        compare failed (a conflict), or none of the added ones did."""
        changed = []
        for write in self.writes:
            if write.expected_revision is None:
                continue
            entry = current.get(write.key)
            if (entry.mod_revision if entry is not None else 0) == write.expected_revision:
                continue
            if write.key not in self.compared:
                return []
            changed.append(write.key)
        return changed


class KeyVersions:
    """What this replica knows of its recorded keys' (mod_revision, version)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._held: dict[str, tuple[int, int]] = {}
        #: How many keys were read to learn their version (a write's extra round trip).
        self.reads = 0

    async def prepare(self, writes: Sequence[Write], recorded: Callable[[str], bool]) -> Versioned:
        """``writes`` as they are sent, each recorded key's (``recorded``) version after
        it known. Raises StoreUnavailable (a key could not be read)."""
        sent, versions, compared = [], {}, set()
        for write in writes:
            if not recorded(write.key) or write.value is None:
                sent.append(write)  # a deletion: the key has no version after it
                continue
            expected = write.expected_revision
            if expected == 0:
                versions[write.key] = 1
            elif expected is None:
                revision, version = await self._now(write.key)
                write = replace(write, expected_revision=revision)
                versions[write.key] = version + 1
                compared.add(write.key)
            else:
                held = self._held.get(write.key)
                if held is None or held[0] != expected:  # changed elsewhere since: read it
                    held = await self._read(write.key)
                # another revision than the one compared: the transaction fails (unknown)
                versions[write.key] = held[1] + 1 if held[0] == expected else 0
            sent.append(write)
        return Versioned(sent, versions, frozenset(compared))

    async def _now(self, key: str) -> tuple[int, int]:
        """The key's (mod_revision, version), held or read now ((0, 0): absent)."""
        held = self._held.get(key)
        return held if held is not None else await self._read(key)

    async def _read(self, key: str) -> tuple[int, int]:
        """The key's (mod_revision, version) read now ((0, 0): absent)."""
        self.reads += 1
        entry = await self.store.get(key)
        self.seen({key: entry})
        return self._held.get(key, (0, 0))

    def stored(self, versioned: Versioned, revision: int) -> None:
        """``versioned``'s writes were stored at ``revision``."""
        for write in versioned.writes:
            version = versioned.versions.get(write.key, 0)
            if write.value is None or not version:
                self._held.pop(write.key, None)
            else:
                self._hold(write.key, (revision, version))

    def seen(self, entries: Mapping[str, Entry | None]) -> None:
        """What keys hold now (read in a transaction's failed compare, or alone)."""
        for key, entry in entries.items():
            if entry is None or not entry.version:
                self._held.pop(key, None)
            else:
                self._hold(key, (entry.mod_revision, entry.version))

    def _hold(self, key: str, held: tuple[int, int]) -> None:
        if len(self._held) >= MAX_HELD and key not in self._held:
            self._held.clear()
        self._held[key] = held
