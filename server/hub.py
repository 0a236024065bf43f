"""Who is listening: agents' Connect streams and operators' WatchBreakers calls.

Every stream has its own bounded queue, so a slow or wedged reader never holds up the
others: when its queue is full the stream is ended (the agent reconnects and gets a fresh
snapshot), never waited for.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .mailbox import Mailbox
from .relayed_agents import MAX_RELAYED_AGENTS, RelayedAgents

_log = logging.getLogger("mission_control.server.hub")

QUEUE_LIMIT = 4096
MAX_LOGGED_SHARED = 1024
_CLOSE = object()


@dataclass(eq=False)
class Subscriber:
    """One outgoing stream."""

    id: int
    #: What the agent is keyed by: its agent id, with its process's instance when it sent one
    #: (see ``inbound.agent_key``). Leases, probe permits, places and ledger sessions use it.
    agent_id: str = ""
    session_id: str = ""
    services: tuple[str, ...] = ()
    #: The hello's outcome_series (names the agent's batches with their sequence).
    series: str = ""
    names: frozenset[str] = frozenset()  # WatchBreakers filter; empty = all
    queue: Mailbox = field(default_factory=lambda: Mailbox(QUEUE_LIMIT))
    overflowed: bool = False
    #: An admin identity (a replica relaying for its agents): bound by fleet-wide caps only.
    trusted: bool = False
    #: A replica's relay (authenticated as one), not an agent.
    replica: bool = False
    #: The client's address (without port).
    peer: str = ""
    #: Whether a batch came on this stream yet: the first says which probes under
    #: permits of the agent's streams before still run (see ``FleetBreakers.holder_said``).
    said: bool = False
    #: (code, details) the stream is to end with, when the client broke a limit.
    refusal: tuple[grpc.StatusCode, str] | None = None
    #: The agent's labels (from its hello) and when the stream opened (wall-clock seconds,
    #: the hub's clock).
    labels: tuple[tuple[str, str], ...] = ()
    since: float = 0.0
    #: The agent id as configured (authorization, reporter lists, figures by agent).
    name: str = ""

    def push(self, message: object) -> bool:
        if self.overflowed:
            return False
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.overflowed = True
            _log.warning("stream %s (%s) is not reading; ending it", self.id, self.agent_id)
            self._force_close()
            return False

    def close(self) -> None:
        self._force_close()

    def refuse(self, code: grpc.StatusCode, details: str) -> None:
        """End the stream with an error (the client broke a limit)."""
        self.refusal = (code, details)
        self._force_close()

    def _force_close(self) -> None:
        # Make room for the close marker even when the queue is full.
        while True:
            try:
                self.queue.put_nowait(_CLOSE)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def next(self) -> object | None:
        """The next message, or None once the stream is to end."""
        item = await self.queue.get()
        return None if item is _CLOSE else item


class Hub:
    """Every open stream, indexed by agent and by peer address so that what runs per
    message or per lease round costs the same with 10 agents as with 10,000.

    Args:
        wall: wall-clock seconds (when a stream opened, as the roster shows it).
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self._ids = itertools.count(1)
        self.agents: dict[int, Subscriber] = {}
        self.watchers: dict[int, Subscriber] = {}
        #: agent id -> its streams, oldest first
        self._by_agent: dict[str, dict[int, Subscriber]] = {}
        #: peer address -> agent id -> streams from there
        self._by_peer: dict[str, dict[str, int]] = {}
        #: configured agent id -> the keys (processes) with a stream under it -> their streams
        self._by_name: dict[str, dict[str, int]] = {}
        #: agent ids already logged as held by two processes (bounded: cleared when full)
        self._logged_shared: set[str] = set()
        #: the agent processes followers hold (their relays say which)
        self.relayed = RelayedAgents()
        #: bumped whenever an agent key gains its first stream or loses its last one
        self.keys_version = 0

    def connect(self, hello: pb.AgentHello, peer: str = "", key: str | None = None) -> Subscriber:
        """A new stream of agent ``key`` (default: the hello's agent id)."""
        key = hello.agent_id if key is None else key
        sub = Subscriber(next(self._ids), key, hello.session_id, tuple(hello.services), peer=peer)
        sub.since = self.wall()
        sub.name = hello.agent_id
        sub.labels = tuple(sorted(hello.labels.items()))
        sub.series = hello.outcome_series
        self.agents[sub.id] = sub
        if sub.agent_id not in self._by_agent:
            self.keys_version += 1
        self._by_agent.setdefault(sub.agent_id, {})[sub.id] = sub
        processes = self._by_name.setdefault(sub.name, {})
        processes[key] = processes.get(key, 0) + 1
        self._check_shared(sub.name)
        from_peer = self._by_peer.setdefault(peer, {})
        from_peer[sub.agent_id] = from_peer.get(sub.agent_id, 0) + 1
        return sub

    def disconnect(self, sub: Subscriber) -> bool:
        """Forget a stream; returns whether its agent has no other stream left."""
        if self.agents.pop(sub.id, None) is not None:
            self._unindex(sub)
            self.relayed.relay_ended(sub.id)
        return sub.agent_id not in self._by_agent

    def relayed_by(self, relay: Subscriber, keys: list[str]) -> None:
        """A follower's relay (stream ``relay``) holds the agent processes ``keys`` now."""
        for name in self.relayed.update(relay.id, keys):
            self._check_shared(name)

    def local_keys(self) -> list[str]:
        """The keys of the agent processes with a stream here (relays are not agents), at
        most as many as a relay may name, sorted."""
        keys = {sub.agent_id for sub in self.agents.values() if not sub.replica}
        return sorted(keys)[:MAX_RELAYED_AGENTS]

    def _check_shared(self, name: str) -> None:
        processes = self.fleet_processes_named(name)
        if len(processes) > 1:
            self._log_shared(name, processes)

    def _log_shared(self, name: str, processes: set[str]) -> None:
        if name in self._logged_shared:
            return
        if len(self._logged_shared) >= MAX_LOGGED_SHARED:
            self._logged_shared.clear()
        self._logged_shared.add(name)
        _log.warning(
            "two processes call themselves %s (%s): each is leased and counted as its own agent; "
            "unless one is a restart of the other, give each its own agent id",
            name, ", ".join(sorted(processes)),
        )  # fmt: skip

    def _unindex(self, sub: Subscriber) -> None:
        processes = self._by_name.get(sub.name)
        if processes is not None and sub.agent_id in processes:
            processes[sub.agent_id] -= 1
            if processes[sub.agent_id] <= 0:
                del processes[sub.agent_id]
            if not processes:
                del self._by_name[sub.name]
        streams = self._by_agent.get(sub.agent_id)
        if streams is not None:
            streams.pop(sub.id, None)
            if not streams:
                del self._by_agent[sub.agent_id]
                self.keys_version += 1
        from_peer = self._by_peer.get(sub.peer)
        if from_peer is not None and sub.agent_id in from_peer:
            from_peer[sub.agent_id] -= 1
            if from_peer[sub.agent_id] <= 0:
                del from_peer[sub.agent_id]
            if not from_peer:
                del self._by_peer[sub.peer]

    def watch(self, names: frozenset[str], peer: str = "") -> Subscriber:
        sub = Subscriber(next(self._ids), names=names, peer=peer, since=self.wall())
        self.watchers[sub.id] = sub
        return sub

    def unwatch(self, sub: Subscriber) -> None:
        self.watchers.pop(sub.id, None)

    def agent_ids_from(self, peer: str) -> set[str]:
        """Agent ids with a stream from ``peer``."""
        return set(self._by_peer.get(peer, ()))

    def agents_from(self, peer: str) -> int:
        """How many agent ids have a stream from ``peer``."""
        return len(self._by_peer.get(peer, ()))

    def has_agent_from(self, peer: str, agent_id: str) -> bool:
        return agent_id in self._by_peer.get(peer, ())

    def watchers_from(self, peer: str) -> int:
        """WatchBreakers calls open from ``peer``."""
        return sum(1 for s in self.watchers.values() if s.peer == peer)

    def streams_of(self, agent_id: str) -> int:
        """Streams of the agent keyed ``agent_id`` (one process, or an agent without instance)."""
        return len(self._by_agent.get(agent_id, ()))

    def sessions_of(self, key: str) -> set[str]:
        """The session ids of the streams of the agent keyed ``key``."""
        return {sub.session_id for sub in self._by_agent.get(key, {}).values()}

    def streams_named(self, name: str) -> int:
        """Streams of every process that calls itself ``name``."""
        return sum(self._by_name.get(name, {}).values())

    def processes_named(self, name: str) -> set[str]:
        """The keys of the processes with a stream under agent id ``name`` here."""
        return set(self._by_name.get(name, ()))

    def fleet_processes_named(self, name: str) -> set[str]:
        """The keys of the processes under agent id ``name`` here or (on the leader) at a
        follower."""
        return self.processes_named(name) | self.relayed.processes_named(name)

    def shared_names(self) -> list[str]:
        """Agent ids more than one process holds a stream under (here, or on the leader
        anywhere in the fleet), sorted."""
        names = set(self._by_name) | set(self.relayed.names())
        return sorted(name for name in names if len(self.fleet_processes_named(name)) > 1)

    @property
    def connected_agents(self) -> int:
        return len(self._by_agent)

    def broadcast(self, message: object) -> None:
        """Queue ``message`` (a ``ConnectResponse``, or a ``PendingSnapshot`` standing for
        one) to every agent stream. One object for all of them, serialised once
        (``serialize_once``): it must not be changed once given to the hub."""
        for sub in list(self.agents.values()):
            sub.push(message)

    def send_to_agent(self, agent_id: str, message: pb.ConnectResponse) -> bool:
        """Send to one of the agent's streams (the oldest that takes it); False when it
        has none."""
        streams = self._by_agent.get(agent_id)
        if streams:
            for sub in list(streams.values()) if len(streams) > 1 else streams.values():
                if sub.push(message):
                    return True
        return False

    def notify_watchers(self, breaker: pb.Breaker, old: BreakerState | None) -> None:
        previous = int(old) if old is not None else pb.BREAKER_STATE_UNSPECIFIED
        response = pb.WatchBreakersResponse(breaker=breaker, previous_state=previous)
        for sub in list(self.watchers.values()):
            if not sub.names or breaker.name in sub.names:
                sub.push(response)

    def close_all(self) -> None:
        for sub in [*self.agents.values(), *self.watchers.values()]:
            sub.close()
