"""A replica publishes the agents connected to it, for every replica's dashboard.

The values live under ``<prefix>/fleet-agents/<replica>/<shard>`` on an etcd lease of this
replica's own, kept alive while it runs and revoked when it stops: when it dies they vanish
within the lease's TTL. Writes are bounded and batched — one transaction at most every
``interval`` seconds, and only when a value changed (agents came or went; their counters
are refreshed every ``counters_every`` seconds only) — and go through the state writer's
primitive, unfenced (a replica writes only its own keys). The agents are packed into shards
of at most :data:`SHARD_AGENTS` agents and :data:`SHARD_BYTES` bytes; beyond
:data:`MAX_SHARDS` shards they are counted, not listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .auth import REPLICA_PREFIX
from .fleet_roster import (
    MAX_SHARDS,
    SHARD_AGENTS,
    SHARD_BYTES,
    FleetAgent,
    FleetRoster,
    encode_shard,
    roster_prefix,
)
from .hub import Hub
from .loop_tasks import end_tasks
from .store import LeaseLost, Store, StoreUnavailable, Write
from .writes import StateWriter

_log = logging.getLogger("mission_control.server.roster_publish")

DEFAULT_TTL = 5
#: How long stop waits for the roster's tasks to end once cancelled.
STOP_SECS = 5.0
#: Counters per agent: ``{agent id: {"calls": .., "failures": .., "rejected": ..}}``.
CountersSource = Callable[[], Mapping[str, Mapping[str, Any]]]


def connected_agents(hub: Hub, replica: str, counters: Mapping[str, Mapping[str, Any]]) -> list[FleetAgent]:
    """The agents with a stream to ``hub`` (replicas' relays are not agents), by id."""
    found: dict[str, FleetAgent] = {}
    for sub in list(hub.agents.values()):
        if sub.replica:
            continue
        known = found.get(sub.agent_id)
        if known is not None:
            found[sub.agent_id] = dataclasses.replace(known, streams=known.streams + 1)
            continue
        # A row per process, named by its agent id (two processes with one id: two rows).
        tally = counters.get(sub.name, {})
        found[sub.agent_id] = FleetAgent(
            sub.name, replica, sub.session_id, sub.services, len(sub.services), sub.labels, sub.since,
            calls=int(tally.get("calls", 0)), failures=int(tally.get("failures", 0)),
            rejected=int(tally.get("rejected", 0)),
        )  # fmt: skip
    return [found[name] for name in sorted(found)]


def linked_relays(hub: Hub) -> list[str]:
    """The replicas (instance ids) whose relay has a stream to ``hub``: on the leader, the
    followers whose agents it counts."""
    return sorted(
        {sub.agent_id.removeprefix(REPLICA_PREFIX) for sub in list(hub.agents.values()) if sub.replica}
    )


def pack(replica: str, agents: list[FleetAgent], relays: list[str] | None = None) -> list[bytes]:
    """The shards' values: agents in order, a new shard when one is full; those beyond
    :data:`MAX_SHARDS` are counted in the first one, which lists the ``relays`` too."""
    shards: list[list[FleetAgent]] = [[]]
    size = 0
    for agent in agents:
        cost = len(json.dumps(agent.to_json(), separators=(",", ":")))
        if shards[-1] and (len(shards[-1]) >= SHARD_AGENTS or size + cost > SHARD_BYTES):
            if len(shards) == MAX_SHARDS:
                break
            shards.append([])
            size = 0
        shards[-1].append(agent)
        size += cost + 1
    omitted = len(agents) - sum(len(s) for s in shards)
    return [
        encode_shard(replica, i, s, omitted if i == 0 else 0, relays or () if i == 0 else ())
        for i, s in enumerate(shards)
    ]


class RosterPublisher:
    """Keeps this replica's agents published on its own lease.

    Args:
        writer: the control plane's state writer (its ``commit`` is the one way to write).
        hub: this replica's streams.
        counters: per-agent counters to publish along (None: none).
    """

    def __init__(
        self,
        store: Store,
        writer: StateWriter,
        hub: Hub,
        prefix: str,
        replica: str,
        *,
        ttl: int = DEFAULT_TTL,
        interval: float = 1.0,
        counters_every: float = 10.0,
        counters: CountersSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.writer, self.hub = store, writer, hub
        self.prefix = f"{roster_prefix(prefix)}{replica}/"
        self.replica = replica
        self.ttl, self.interval, self.counters_every = ttl, interval, counters_every
        self.counters_source = counters or dict
        self.clock = clock
        self.lease = 0
        #: What the store holds of ours (key -> value), as last written on ``lease``.
        self._written: dict[str, bytes] = {}
        self._counters: Mapping[str, Mapping[str, Any]] = {}
        self._counted_at = -float("inf")
        self._renewed_at = 0.0
        self.writes = 0

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
            except StoreUnavailable as err:
                _log.debug("agents not published (%s); again in %gs", err, self.interval)
            await asyncio.sleep(self.interval)

    async def publish(self) -> None:
        """One round: renew (or take) the lease, then write what changed, if anything.
        Raises StoreUnavailable."""
        await self._hold_lease()
        now = self.clock()
        if now - self._counted_at >= self.counters_every:
            self._counters, self._counted_at = self.counters_source(), now
        agents = connected_agents(self.hub, self.replica, self._counters)
        values = pack(self.replica, agents, linked_relays(self.hub))
        wanted = {f"{self.prefix}{i}": value for i, value in enumerate(values)}
        writes = [Write(k, v, lease=self.lease) for k, v in wanted.items() if self._written.get(k) != v]
        writes += [Write(k, None) for k in self._written if k not in wanted]
        if not writes:
            return
        try:
            result = await self.writer.commit(writes)
        except LeaseLost:  # revoked by hand, or expired while etcd was slow: not an outage
            _log.warning("replica %s: its roster lease is gone; publishing on a new one", self.replica)
            self.republish()
            await self._hold_lease()
            result = await self.writer.commit([Write(k, v, lease=self.lease) for k, v in wanted.items()])
        if result.ok:
            self._written = wanted
            self.writes += 1

    async def _hold_lease(self) -> None:
        now = self.clock()
        if self.lease and now - self._renewed_at >= self.ttl / 3:
            if await self.store.refresh_lease(self.lease) > 0:
                self._renewed_at = now
            else:
                _log.warning("replica %s: its roster lease expired; publishing again", self.replica)
                self.lease = 0
        if not self.lease:
            self.lease = await self.store.grant_lease(self.ttl)
            self._renewed_at = now
            # keys of an earlier lease (this id restarted, or the lease expired) go now
            entries, _ = await self.store.get_prefix(self.prefix)
            self._written = {entry.key: b"" for entry in entries}

    def republish(self) -> None:
        """The store lost its data: take a new lease and write every value again."""
        self.lease = 0
        self._written = {}

    async def stop(self) -> None:
        """Withdraw this replica's agents now (revoking the lease deletes its keys)."""
        if self.lease:
            with contextlib.suppress(StoreUnavailable):
                await self.store.revoke_lease(self.lease)
            self.lease = 0


class ReplicaRoster:
    """This replica's side of the fleet's roster: publish its agents, follow everyone's."""

    def __init__(
        self, publisher: RosterPublisher, view: FleetRoster, on_ended: Callable[[asyncio.Task[None]], None]
    ) -> None:
        self.publisher, self.view = publisher, view
        #: Called when a task ends by itself (logs it; the replica stops serving).
        self.on_ended = on_ended
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.publisher.run(), name="roster.publish"),
            asyncio.create_task(self.view.run(), name="roster.follow"),
        ]
        for task in self._tasks:
            task.add_done_callback(self.on_ended)

    async def stop(self) -> None:
        left = await end_tasks(self._tasks, STOP_SECS)  # an error a task ended with was logged
        if left:
            _log.error("roster tasks %s did not end when cancelled; stopping without them", left)
        await self.publisher.stop()
