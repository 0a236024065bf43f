"""The agent processes connected to the followers, as their relays tell the leader.

A follower's relay sends the keys of its agents (``AgentHello.relayed_agents``) in a new
hello whenever they change. With them the leader sees an agent id held by two processes
even when each is connected to another replica (twins), which no replica sees alone. A
process that moved from one replica to another has one key on both, so it is no twin.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

#: Keys a relay may name (far beyond what one replica holds; the rest are not seen).
MAX_RELAYED_AGENTS = 4096
#: A key is an agent id (a name) and an instance or session digest.
MAX_RELAYED_KEY_CHARS = 256


def name_of(key: str) -> str:
    """The agent id of an agent process's key (``id``, ``id@instance`` or ``id@~session``)."""
    return key.partition("@")[0]


class RelayedAgents:
    """Which agent processes each follower's relay says it holds."""

    def __init__(self) -> None:
        #: relay stream id -> the keys it named
        self._by_relay: dict[int, frozenset[str]] = {}
        #: agent id -> key -> how many relays name it
        self._by_name: dict[str, Counter[str]] = {}

    def update(self, relay: int, keys: Iterable[str]) -> set[str]:
        """Relay stream ``relay`` holds ``keys`` now; returns the agent ids it newly names."""
        new = frozenset(list(keys)[:MAX_RELAYED_AGENTS])
        old = self._by_relay.pop(relay, frozenset())
        self._drop(old - new)
        for key in new - old:
            self._by_name.setdefault(name_of(key), Counter())[key] += 1
        if new:
            self._by_relay[relay] = new
        return {name_of(key) for key in new - old}

    def relay_ended(self, relay: int) -> None:
        self._drop(self._by_relay.pop(relay, frozenset()))

    def keys_of(self, relay: int) -> frozenset[str]:
        """The keys relay stream ``relay`` named last."""
        return self._by_relay.get(relay, frozenset())

    def processes_named(self, name: str) -> set[str]:
        """The keys of the processes under agent id ``name`` that followers hold."""
        return set(self._by_name.get(name, ()))

    def names(self) -> Iterable[str]:
        return self._by_name.keys()

    def _drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            name = name_of(key)
            held = self._by_name.get(name)
            if held is None:
                continue
            held[key] -= 1
            if held[key] <= 0:
                del held[key]
            if not held:
                del self._by_name[name]
