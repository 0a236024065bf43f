"""What a replica saw at each revision of a key, to notice a store that lost its data and
was written again in the same order since (a restore)."""

from __future__ import annotations


class SeenValues:
    """key -> (revision, hash of the value) of the newest value seen for it.

    In a store that kept its data a revision names one value for good: the same key at
    the same revision with another value means the store was wiped and written again up
    to that revision, where neither its revision nor the key's went backwards.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int]] = {}

    def note(self, key: str, value: bytes | None, revision: int) -> None:
        """``key`` holds ``value`` (None: deleted) at ``revision``."""
        if value is None:
            if revision >= self._seen.get(key, (0, 0))[0]:  # else a deletion heard late
                self._seen.pop(key, None)
        elif revision >= self._seen.get(key, (0, 0))[0]:
            self._seen[key] = (revision, hash(value))

    def rewritten(self, key: str, value: bytes | None, revision: int) -> bool:
        """Whether ``key`` holds another value at ``revision`` than the one seen there."""
        seen = self._seen.get(key)
        return seen is not None and value is not None and seen[0] == revision and seen[1] != hash(value)

    def clear(self) -> None:
        """Forget everything (the revisions belong to data the store lost)."""
        self._seen.clear()
