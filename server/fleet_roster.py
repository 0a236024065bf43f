"""Which agents are connected to which replica, fleet-wide: the values each replica publishes
under ``<prefix>/fleet-agents/<replica>/<shard>`` and the watch every replica follows.

A replica writes its own agents only (see :mod:`.roster_publish`), on its own etcd lease, so
the keys of a replica that dies vanish when its lease expires. Every replica follows the
whole prefix: a value that does not parse — or claims another replica than its key — is
ignored and counted, never shown and never fatal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mission_control.client.policy import name_problem

from .store import Store, StoreUnavailable, WatchCompacted

_log = logging.getLogger("mission_control.server.fleet_roster")

ROSTER_DIR = "fleet-agents/"
#: Listed per agent (the rest is counted): a value stays small whatever an agent declares.
MAX_LISTED_SERVICES = 16
MAX_LISTED_LABELS = 8
MAX_LABEL_CHARS = 64
#: A shard holds at most this many agents and bytes; a replica writes at most MAX_SHARDS
#: (its one transaction stays far under etcd's request size and operation limits).
SHARD_AGENTS = 250
SHARD_BYTES = 32 * 1024
MAX_SHARDS = 32
#: Counters an agent entry may carry (its outcomes as reported to its replica).
COUNTERS = ("calls", "failures", "rejected")
#: Replicas a replica may list as linked to it (its followers' relays, when it leads).
MAX_LISTED_RELAYS = 64
#: Agents a replica may say it left out of its values (far beyond what one replica holds).
MAX_OMITTED = 1_000_000
#: A shard's number in its key: ASCII digits, no leading zero.
_SHARD = re.compile(r"0|[1-9][0-9]{0,3}")
#: The largest ``since`` accepted (seconds since the epoch, far in the future).
MAX_SECONDS = 1e11


@dataclass(frozen=True, slots=True)
class FleetAgent:
    """One agent connected to one replica."""

    id: str
    replica: str
    session: str = ""
    services: tuple[str, ...] = ()
    services_total: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    since: float = 0.0
    streams: int = 1
    calls: int = 0
    failures: int = 0
    rejected: int = 0

    def to_json(self) -> dict[str, Any]:
        """The stored form (the replica is the key's, not repeated per agent)."""
        return {
            "id": self.id,
            "session": self.session,
            "services": list(self.services[:MAX_LISTED_SERVICES]),
            "services_total": max(self.services_total, len(self.services)),
            "labels": {k[:MAX_LABEL_CHARS]: v[:MAX_LABEL_CHARS] for k, v in self.labels[:MAX_LISTED_LABELS]},
            "since": round(self.since, 3),
            "streams": self.streams,
            **{name: getattr(self, name) for name in COUNTERS},
        }

    def as_dict(self, this_replica: str) -> dict[str, Any]:
        """What the dashboard shows."""
        return {**self.to_json(), "replica": self.replica, "this_replica": self.replica == this_replica}


def roster_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/{ROSTER_DIR}"


def encode_shard(
    replica: str, shard: int, agents: Iterable[FleetAgent], omitted: int = 0, relays: Iterable[str] = ()
) -> bytes:
    """One stored value: up to a shard's worth of one replica's agents (and, in the first
    shard, the replicas whose relay is linked to this one: ``relays``)."""
    value: dict[str, Any] = {"replica": replica, "shard": shard, "omitted": omitted}
    value["agents"] = [a.to_json() for a in agents]
    linked = sorted(relays)[:MAX_LISTED_RELAYS]
    if linked:
        value["relays"] = linked
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode_relays(raw: bytes) -> frozenset[str]:
    """The replicas a stored value names as linked to its replica (a malformed list: none)."""
    relays = json.loads(raw, parse_constant=_no_constant).get("relays", [])
    if not isinstance(relays, list) or len(relays) > MAX_LISTED_RELAYS:
        return frozenset()
    return frozenset(r for r in relays if isinstance(r, str) and not name_problem(r))


def decode_shard(key_replica: str, raw: bytes, key_shard: int | None = None) -> tuple[list[FleetAgent], int]:
    """The agents of one stored value and how many its replica left out (``key_shard``: the
    number its key gives, which the value must repeat). Raises ValueError saying what is wrong."""
    value = json.loads(raw, parse_constant=_no_constant)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if value.get("replica") != key_replica:
        raise ValueError(f"names replica {value.get('replica')!r}, its key {key_replica!r}")
    if key_shard is not None and (not _count(value.get("shard")) or value.get("shard") != key_shard):
        raise ValueError(f"names shard {value.get('shard')!r}, its key {key_shard}")
    omitted, agents = value.get("omitted", 0), value.get("agents")
    if (
        not _count(omitted)
        or omitted > MAX_OMITTED
        or not isinstance(agents, list)
        or len(agents) > SHARD_AGENTS
    ):
        raise ValueError(
            f"'omitted' must be a count up to {MAX_OMITTED} and 'agents' a list of at most {SHARD_AGENTS}"
        )
    return [_agent(key_replica, i, entry) for i, entry in enumerate(agents)], omitted


def _agent(replica: str, index: int, entry: object) -> FleetAgent:
    where = f"agents[{index}]"
    if not isinstance(entry, dict) or name_problem(entry.get("id")):
        raise ValueError(f"{where}: an object whose 'id' is an agent id")
    services, labels = entry.get("services", []), entry.get("labels", {})
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise ValueError(f"{where}.services: a list of names")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"{where}.labels: an object of strings")
    since, session = entry.get("since", 0.0), entry.get("session", "")
    numbers = {name: entry.get(name, 0) for name in ("streams", "services_total", *COUNTERS)}
    bad = sorted(name for name, n in numbers.items() if not _count(n))
    if bad or not _instant(since) or not isinstance(session, str):
        raise ValueError(f"{where}: {', '.join(bad) or 'since/session'} of the wrong type")
    listed = tuple(services[:MAX_LISTED_SERVICES])
    shown = tuple(sorted(labels.items()))
    return FleetAgent(entry["id"], replica, session, listed, labels=shown, since=float(since), **numbers)


def _no_constant(name: str) -> None:
    # Python's json reads NaN and Infinity; a page's JSON.parse does not (nor does etcdctl's reader).
    raise ValueError(f"{name} is not a number JSON allows")


def _instant(value: object) -> bool:
    """A finite number of seconds (1e999 reads as infinity; a huge integer overflows a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) <= MAX_SECONDS and math.isfinite(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class FleetRoster:
    """Every replica's published agents, kept equal to the store by a watch.

    Args:
        store: the shared store.
        prefix: the control plane's key prefix.
    """

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = roster_prefix(prefix)
        self._shards: dict[str, tuple[list[FleetAgent], int]] = {}
        #: replica -> the replicas its values name as linked to it (relaying to it)
        self._relays: dict[str, frozenset[str]] = {}
        #: Values ignored as malformed (each stored revision once), and the latest reason.
        self.malformed = 0
        self.problem = ""
        self._bad: dict[str, int] = {}
        self.loaded = asyncio.Event()
        self._reload = asyncio.Event()

    def agents(self) -> list[FleetAgent]:
        """Every published agent, by replica then id."""
        found = [a for agents, _ in self._shards.values() for a in agents]
        return sorted(found, key=lambda a: (a.replica, a.id))

    def elsewhere(self, replica: str) -> set[tuple[str, str]]:
        """(agent id, session) of every agent process published as connected to another
        replica than ``replica``."""
        return {
            (a.id, a.session) for agents, _ in self._shards.values() for a in agents if a.replica != replica
        }

    def counted_elsewhere(self, replica: str, leader: str | None) -> set[tuple[str, str]]:
        """(agent id, session) of every agent process published as connected to another
        replica than ``replica`` that the leader ``leader`` counts: the leader itself, or a
        replica whose relay the leader lists as linked to it (None: no leader known, none)."""
        if leader is None:
            return set()
        counted = {leader} | self._relays.get(leader, frozenset())
        return {
            (a.id, a.session)
            for agents, _ in self._shards.values()
            for a in agents
            if a.replica != replica and a.replica in counted
        }

    def per_replica(self) -> Counter[str]:
        """Agents connected per replica (those left out of its values included)."""
        counts: Counter[str] = Counter()
        for key, (agents, omitted) in self._shards.items():
            counts[self._replica_of(key)] += len(agents) + omitted
        return counts

    def apply(self, key: str, value: bytes | None, revision: int, lease: int) -> None:
        """One stored value (None: deleted), bound to etcd lease ``lease`` (0: none)."""
        self._shards.pop(key, None)
        replica = self._replica_of(key)
        if key.endswith("/0"):  # (the first shard lists the relays)
            self._relays.pop(replica, None)
        if value is None:
            self._bad.pop(key, None)
            return
        try:
            shard = key.removeprefix(self.prefix + replica + "/")
            if name_problem(replica) or not _SHARD.fullmatch(shard) or int(shard) >= MAX_SHARDS:
                raise ValueError(f"the key is not <replica>/<shard number below {MAX_SHARDS}>")
            if not lease:  # a replica's values live on its lease: one without would never go
                raise ValueError("not bound to a lease (a replica writes its agents on its own)")
            self._shards[key] = decode_shard(replica, value, int(shard))
            if shard == "0":
                self._relays[replica] = decode_relays(value)
        except (ValueError, RecursionError) as err:  # json.JSONDecodeError is a ValueError
            if self._bad.get(key) != revision:
                self._bad[key] = revision
                self.malformed += 1
                self.problem = f"{key}: {err}"
                _log.warning("ignoring a malformed roster value at %s: %s", key, err)

    def _replica_of(self, key: str) -> str:
        return key.removeprefix(self.prefix).partition("/")[0]

    def reload(self) -> None:
        """Read the prefix again and watch from there: the store lost its data (wiped or
        replaced), so the watch's revision belongs to the old data and would see nothing."""
        self._reload.set()

    async def run(self) -> None:
        """Load the prefix, then follow it; reload after a compaction, an outage or a wipe."""
        backoff = 0.1
        while True:
            try:
                self._reload.clear()  # a wipe noticed from here on is not lost
                entries, revision = await self.store.get_prefix(self.prefix)
                self._shards.clear()
                self._relays.clear()
                for entry in entries:
                    self.apply(entry.key, entry.value, entry.mod_revision, entry.lease)
                self.loaded.set()
                backoff = 0.1
                await self._follow(revision)
                _log.info("roster: the store lost its data; reading it again")
            except (StoreUnavailable, WatchCompacted) as err:
                _log.debug("roster watch ended (%s); reading it again", err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _follow(self, revision: int) -> None:
        """Apply the watch until it fails (raises) or a reload is asked for (returns)."""

        async def watch() -> None:
            async for events in self.store.watch(self.prefix, revision + 1):
                for event in events:
                    self.apply(event.key, event.value, event.mod_revision, event.lease)

        watching = asyncio.create_task(watch())
        reload = asyncio.create_task(self._reload.wait())
        try:
            await asyncio.wait({watching, reload}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watching, reload):
                task.cancel()
        if watching.done() and not watching.cancelled():
            watching.result()  # raises what ended the watch
