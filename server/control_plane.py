"""The control plane's moving parts around the engine: store sync, persistence, timers, health.

* **sync**: load every policy and breaker from the store, then follow its watch; a
  compacted watch reloads everything.
* **persist**: every transition the engine decides is written with compare-and-swap on
  the key's ``mod_revision``; a lost CAS re-reads and adopts the stored state. While the
  store is down, transitions stay in memory (and are pushed to agents) and are written
  when it returns.
* **tick**: moves OPEN breakers to HALF_OPEN on time and expires unused probe permits.
* **health**: pings the store; ``store_ok`` drives the gRPC health status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState, Transition
from mission_control.client.config import policy_to_json, policy_to_proto
from mission_control.client.errors import StorageFailure
from mission_control.client.policy import ServicePolicy
from mission_control.client.telemetry import Telemetry
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .admission import ServiceAdmission, forget_idle
from .capacity import CapacityLeaser
from .engine import FleetBreakers
from .hub import Hub
from .leadership import Leadership
from .observability import FleetTelemetry
from .policies import PolicyBook
from .relay import LeaderRelay
from .reports import ReportGate
from .stats import FleetStatistics
from .store import Guard, Store, StoreUnavailable, WatchCompacted, Write

_log = logging.getLogger("mission_control.server")

DEFAULT_PREFIX = "/mission-control/v1"

#: A snapshot stays under this size: gRPC clients accept 4 MiB by default.
SNAPSHOT_MAX_BYTES = 3 * 1024 * 1024


class ControlPlane:
    """Owns fleet-wide breaker state and policy, durable in a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        *,
        prefix: str = DEFAULT_PREFIX,
        instance_id: str = "",
        tick_interval: float = 0.02,
        ping_interval: float = 1.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.instance_id = instance_id
        self.tick_interval = tick_interval
        self.ping_interval = ping_interval
        self.policies = PolicyBook(self.prefix)
        self.breakers = FleetBreakers(self.policies.policy_of)
        self.stats = FleetStatistics()
        self.hub = Hub()
        #: Called with (agent id, summary) for every outcome summary an agent sends here.
        self.outcome_listeners: list[Callable[[str, pb.OutcomeSummary], None]] = []
        self.store_ok = False
        #: Background loops that ended with an error: the replica no longer serves.
        self.failed_loops: list[str] = []
        self.health_listeners: list[Callable[[bool], None]] = []
        #: Set by enable_leadership (replicas on one etcd); None = this one always decides.
        self.leadership: Leadership | None = None
        self.relay: LeaderRelay | None = None
        self.capacity = CapacityLeaser(self)
        self.admission = ServiceAdmission(self.policies, self.breakers)
        self.reports = ReportGate(self.policies.policy_of)
        self._dirty: set[str] = set()
        self._in_flight: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._loaded = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.telemetry = FleetTelemetry(telemetry, self) if telemetry is not None else None
        if self.telemetry is not None:
            self.policies.on_reload = self.telemetry.reload
        self.policies.listeners.append(self._on_policy)
        self.breakers.change_listeners.append(self._on_breaker)
        self.breakers.grant_listeners.append(self._on_grant)

    # -- keys ------------------------------------------------------------------

    def breaker_key(self, name: str) -> str:
        return f"{self.prefix}/breakers/{name}"

    def _breaker_of(self, key: str) -> str | None:
        head = f"{self.prefix}/breakers/"
        return key[len(head) :] if key.startswith(head) else None

    # -- leadership ------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this replica decides transitions now."""
        return self.leadership is None or self.leadership.leading

    def enable_leadership(
        self,
        address: str,
        *,
        ttl: int = 3,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Run as one of several replicas: campaign for leadership, relay to the leader
        (over TLS when ``credentials`` are given)."""
        self.leadership = Leadership(
            self.store, self.prefix, self.instance_id, address, ttl=ttl, on_change=self._on_leadership
        )
        self.relay = LeaderRelay(self, token=token, credentials=credentials)

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            if self.relay is not None:  # outcomes gathered before this replica knew it leads
                for summary in self.relay.drain():
                    self.breakers.record(self.relay.agent_id, summary)
        else:
            self._dirty.clear()  # a follower decides nothing; the new leader's state will arrive

    def record_outcomes(self, agent_id: str, summary: pb.OutcomeSummary) -> None:
        if self.leading or self.relay is None:
            self.breakers.record(agent_id, summary)
        else:
            self.relay.add(agent_id, summary)

    def request_probe(self, agent_id: str, service: str) -> None:
        if self.leading or self.relay is None:
            self.breakers.request_probe(agent_id, service)
        else:
            self.relay.ask_probe(agent_id, service)

    def record_demand(self, agent_id: str, demand: pb.CapacityDemand) -> None:
        if self.leading or self.relay is None:
            self.capacity.demand(agent_id, demand)
        else:
            self.relay.demand(agent_id, demand)

    def agent_left(self, agent_id: str) -> None:
        self.breakers.release_agent(agent_id)
        self.capacity.forget(agent_id)
        self.reports.agent_left(agent_id)
        if self.relay is not None:
            self.relay.agent_left(agent_id)

    # -- lifecycle -------------------------------------------------------------

    async def start(self, load_timeout: float = 10.0) -> None:
        """Start the background loops; waits up to ``load_timeout`` for the first load
        (when the store is down it serves defaults and catches up later)."""
        loops = [self._sync_loop, self._persist_loop, self._tick_loop, self._health_loop, self._forget_loop]
        if self.leadership is not None and self.relay is not None:
            loops += [self.leadership.run, self.relay.run]
        for loop in loops:
            task = asyncio.create_task(loop(), name=loop.__name__)
            task.add_done_callback(self._loop_ended)
            self._tasks.append(task)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), load_timeout)
        if self.leadership is not None:  # give the first campaign a moment to settle
            deadline = time.monotonic() + 2.0
            while self.leadership.leader_id is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    @property
    def serving(self) -> bool:
        """What gRPC health reports: the store answers and every background loop runs."""
        return self.store_ok and not self.failed_loops

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        # Every loop runs until cancelled: one that returns or raises leaves this replica
        # unable to decide (no tick, no sync), so orchestrators must see it as not serving.
        if task.cancelled():
            return
        error = task.exception()
        _log.critical(
            "background loop %s ended: %r; health is NOT_SERVING", task.get_name(), error, exc_info=error
        )
        self.failed_loops.append(task.get_name())
        self._notify_health()

    async def stop(self) -> None:
        await self.flush(timeout=2.0)
        if self.leadership is not None:
            await self.leadership.resign()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.hub.close_all()

    async def flush(self, timeout: float) -> bool:
        """Wait until every decided transition is stored (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (self._dirty or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not (self._dirty or self._in_flight)

    # -- store sync ------------------------------------------------------------

    async def _sync_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                revision = await self._load_all()
                self._set_store_ok(True)
                self._loaded.set()
                backoff = 0.1
                async for events in self.store.watch(self.prefix + "/", revision + 1):
                    for event in events:
                        self._apply(event.key, event.value, event.mod_revision)
            except WatchCompacted as err:
                _log.warning("%s; reloading everything", err)
            except StoreUnavailable as err:
                self._set_store_ok(False)
                _log.warning("store unavailable (%s); serving from memory", err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _load_all(self) -> int:
        entries, revision = await self.store.get_prefix(self.prefix + "/")
        seen_policies = set()
        for entry in entries:
            self._apply(entry.key, entry.value, entry.mod_revision)
            service = self.policies.service_of(entry.key)
            if service is not None:
                seen_policies.add(service)
        for policy in self.policies.all():
            if policy.service not in seen_policies:  # deleted while we were not watching
                self.policies.apply(self.policies.key(policy.service), None, revision)
        return revision

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        if self.policies.service_of(key) is not None:
            self.policies.apply(key, value, revision)
            return
        name = self._breaker_of(key)
        if name is None:
            return
        if revision <= self.breakers.revisions.get(name, 0):
            return  # our own write, or older
        if value is None and self.breakers.find(name) is None:
            return  # a forgotten breaker's key deleted: nothing to start over
        if name in self._dirty or name in self._in_flight:
            return  # the pending CAS write will fail and adopt the stored state
        try:
            self.breakers.adopt(name, value, revision)
        except ValueError as err:
            _log.error("ignored malformed breaker record at %s: %s", key, err)

    # -- persistence -----------------------------------------------------------

    async def _persist_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            for name in sorted(self._dirty):
                self._dirty.discard(name)
                self._in_flight.add(name)
                try:
                    await self._persist(name)
                except StoreUnavailable as err:
                    self._dirty.add(name)
                    self._set_store_ok(False)
                    _log.warning("breaker %s not stored yet (%s); will retry", name, err)
                finally:
                    self._in_flight.discard(name)
            if self._dirty:
                await asyncio.sleep(0.5)
                self._dirty_event.set()

    async def _persist(self, name: str) -> None:
        key = self.breaker_key(name)
        expected = self.breakers.revisions.get(name, 0)
        guards: list[Guard] = []
        if self.leadership is not None:
            guard = self.leadership.guard()
            if guard is None:
                return  # deposed: the new leader decides
            guards.append(guard)
        revision = await self.store.commit([Write(key, self.breakers.to_record(name), expected)], guards)
        if revision is not None:
            self.breakers.revisions[name] = revision
            return
        entry = await self.store.get(key)
        _log.info("breaker %s changed elsewhere; adopting the stored state", name)
        self.breakers.adopt(name, entry.value if entry else None, entry.mod_revision if entry else 0)

    # -- operator writes (acknowledged only once stored) -----------------------

    async def set_breaker_state(self, name: str, state: BreakerState, reason: str) -> pb.Breaker:
        """Force a breaker's state; returns the stored breaker. Raises StorageFailure
        when the store cannot take the write (nothing changes then)."""
        for _ in range(10):
            breaker = self.breakers.draft(name)
            breaker.force(time.monotonic(), state, reason)
            record = self.breakers.record_of(breaker)
            expected = self.breakers.revisions.get(name, 0)
            try:
                revision = await self.store.put(self.breaker_key(name), record, expected_revision=expected)
                if revision is None:
                    entry = await self.store.get(self.breaker_key(name))
                    self.breakers.adopt(
                        name, entry.value if entry else None, entry.mod_revision if entry else 0
                    )
                    continue
            except StoreUnavailable as err:
                self._set_store_ok(False)
                raise StorageFailure("etcd", "set breaker state", str(err)) from err
            self._dirty.discard(name)
            self.breakers.adopt(name, record, revision)
            # What this write stored, even if a newer write has been applied meanwhile.
            written = json_format.Parse(record, pb.Breaker(), ignore_unknown_fields=True)
            written.revision = revision
            return written
        raise StorageFailure("etcd", "set breaker state", "too many concurrent changes; retry")

    async def put_policy(self, policy: ServicePolicy, expected_revision: int = 0) -> int | None:
        """Store a validated policy; returns its revision, or None when
        ``expected_revision`` no longer matches. Raises StorageFailure."""
        key = self.policies.key(policy.service)
        value = policy_to_json(policy).encode()
        try:
            revision = await self.store.put(key, value, expected_revision=expected_revision or None)
        except StoreUnavailable as err:
            self._set_store_ok(False)
            raise StorageFailure("etcd", "put policy", str(err)) from err
        if revision is not None:
            self.policies.apply(key, value, revision)
        return revision

    async def delete_policy(self, service: str) -> bool:
        key = self.policies.key(service)
        if self.policies.stored(service) is None:
            return False
        try:
            revision = await self.store.commit([Write(key, None)])
        except StoreUnavailable as err:
            self._set_store_ok(False)
            raise StorageFailure("etcd", "delete policy", str(err)) from err
        self.policies.apply(key, None, revision or 0)
        return True

    # -- forgetting idle breakers ----------------------------------------------

    async def _forget_loop(self) -> None:
        every = max(0.05, min(60.0, self.admission.limits.idle_secs / 10))
        await forget_idle(self.admission, self.forget_breaker, every)

    async def forget_breaker(self, name: str) -> None:
        """Drop an idle breaker no policy names; the leader also deletes its stored key."""
        revision = self.breakers.revisions.get(name, 0)
        if name in self._dirty or name in self._in_flight:
            return
        self.breakers.forget(name)
        guard = self.leadership.guard() if self.leadership is not None else None
        if not revision or not self.leading or (self.leadership is not None and guard is None):
            return
        try:
            await self.store.commit([Write(self.breaker_key(name), None, revision)], [guard] if guard else [])
        except StoreUnavailable as err:
            _log.warning("stored breaker %s not deleted (%s); a restart loads it again", name, err)

    # -- timers and health -----------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            if self.leading:
                self.breakers.tick()
                self.capacity.tick()
            await asyncio.sleep(self.tick_interval)

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.store.ping()
                if not self.store_ok:
                    _log.info("store reachable again")
                    self._dirty_event.set()
                self._set_store_ok(True)
            except StoreUnavailable:
                self._set_store_ok(False)
            await asyncio.sleep(self.ping_interval)

    def _set_store_ok(self, ok: bool) -> None:
        if ok == self.store_ok:
            return
        self.store_ok = ok
        self._notify_health()

    def _notify_health(self) -> None:
        for listener in list(self.health_listeners):
            listener(self.serving)

    # -- listeners -------------------------------------------------------------

    def _on_breaker(self, message: pb.Breaker, old: BreakerState | None, move: Transition | None) -> None:
        if move is not None:  # decided here: store it
            self._dirty.add(message.name)
            self._dirty_event.set()
            if self.telemetry is not None:
                self.telemetry.transition(message, move)
        if message.state == pb.BREAKER_STATE_OPEN and old is not BreakerState.OPEN:
            self.stats.add_breaker_open()
        self.hub.broadcast(pb.ConnectResponse(breaker=message))
        self.hub.notify_watchers(message, old)

    def _on_policy(self, service: str, policy: ServicePolicy | None) -> None:
        self.breakers.policy_changed(service)
        self.capacity.sync_policies()
        update = pb.PolicyUpdate(service=service, deleted=policy is None)
        if policy is not None:
            update.policy.CopyFrom(policy_to_proto(policy))
        self.hub.broadcast(pb.ConnectResponse(policy=update))

    def _on_grant(self, agent: str, grant: pb.ProbeGrant) -> None:
        if not self.hub.send_to_agent(agent, pb.ConnectResponse(probe_grant=grant)):
            asyncio.get_running_loop().call_soon(self.breakers.release_agent, agent)

    # -- snapshot for a new stream ---------------------------------------------

    def snapshot(self, services: tuple[str, ...] = (), max_bytes: int = SNAPSHOT_MAX_BYTES) -> pb.Snapshot:
        """The full view for a new stream, kept under ``max_bytes``: the breakers of
        ``services`` (the agent's own) and those not CLOSED come first."""
        snapshot = pb.Snapshot(
            policies=[policy_to_proto(p) for p in self.policies.all()], control_plane_id=self.instance_id
        )
        mine = set(services)
        ranked = sorted(
            self.breakers.snapshot(),
            key=lambda b: (b.name not in mine, b.state == pb.BREAKER_STATE_CLOSED, b.name),
        )
        size = snapshot.ByteSize()
        for breaker in ranked:
            size += breaker.ByteSize() + 8  # field tag and length
            if size > max_bytes:
                snapshot.omitted_breakers += 1
            else:
                snapshot.breakers.append(breaker)
        if snapshot.omitted_breakers:
            _log.warning("snapshot left out %d breakers (size bound)", snapshot.omitted_breakers)
        return snapshot
