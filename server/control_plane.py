"""The control plane's moving parts around the engine: store sync, persistence, timers, health.

* **sync**: load every policy and breaker from the store, then follow its watch; a
  compacted watch reloads everything.
* **persist** (:mod:`.writes`): every transition the engine decides is written with
  compare-and-swap on the key's ``mod_revision``, fenced to the leader; a lost CAS adopts
  the stored state, a lost fence keeps the decision pending until this replica leads again
  or another leader supersedes it. While the store is down, transitions stay in memory (and
  are pushed to agents) and are written when it returns. Losing leadership reloads
  everything from the store.
* **tick**: moves OPEN breakers to HALF_OPEN on time and expires unused probe permits.
* **health**: pings the store; ``store_ok`` drives the gRPC health status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable
from functools import partial

import grpc
from mission_control.client.breaker import BreakerState, Transition
from mission_control.client.config import policy_to_proto
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy
from mission_control.client.telemetry import Telemetry
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2

from .admission import ServiceAdmission, forget_idle
from .audit import ENGINE, AuditLog, Author, Retention
from .audit_keeper import AuditKeeper
from .breaker_names import unknown_breaker
from .capacity import CapacityLeaser
from .engine import FleetBreakers
from .fleet_roster import FleetRoster
from .grant_numbers import GrantNumbers
from .grant_pause import GrantPause
from .held_keys import HeldKeysCheck, TokenWatch
from .held_newer import HeldNewer
from .hub import Hub, Subscriber
from .last_good import RecordedGood
from .leader_states import LeaderStates
from .leadership import Leadership
from .lease_epoch import RECORD as LEASE_EPOCH_RECORD
from .lease_epoch import LeaseEpochs
from .lease_horizons import in_force
from .loop_tasks import end_tasks
from .observability import FleetTelemetry
from .outcome_ledger import BatchKey, OutcomeLedger
from .policies import PolicyBook
from .recovery_checks import RecoveryChecks
from .refused_held import overwrite_refused
from .relay import LeaderRelay, RelayConnect
from .reports import ReportGate
from .shadow import ShadowTrials, shadow_book
from .snapshot_build import SNAPSHOT_SLICE, PendingSnapshot, SnapshotBuild
from .stats import FleetStatistics
from .store import EtcdStore, Store, StoreUnavailable, Write
from .store_history import KEY as HISTORY_KEY
from .store_history import StoreHistory
from .sync import StoreSync
from .takeover_read import TakeoverRead
from .writes import StateWriter

_log = logging.getLogger("mission_control.server")

DEFAULT_PREFIX = "/mission-control/v1"

#: A snapshot stays under this size: gRPC clients accept 4 MiB by default.
SNAPSHOT_MAX_BYTES = 3 * 1024 * 1024
#: How long the breakers' tick works through a burst of deadlines before it lets the event
#: loop turn (measured on the control plane's clock, as a load's ``LOAD_SLICE_SECS``): 15,000
#: OPEN going HALF_OPEN at once took 366 ms of CPU in the engine alone, longer with the
#: pushes, and the leader lease's keep-alive waited behind it.
TICK_SLICE_SECS = 0.01
#: Leases sent per turn of the event loop in a lease round (see ``bench.scale``).
LEASE_SLICE = 500
#: How long stop waits for its background loops to end once cancelled.
STOP_TASKS_SECS = 5.0
#: The policies' share of it: a write that would take them beyond is refused.
POLICIES_MAX_BYTES = 2 * 1024 * 1024


def policies_bytes(policies: Iterable[ServicePolicy]) -> int:
    """What ``policies`` take in a snapshot."""
    return sum(policy_to_proto(p).ByteSize() + 8 for p in policies)  # + field tag and length


def check_policies_fit(policies: Iterable[ServicePolicy]) -> None:
    """Raises ConfigurationError when ``policies`` would not fit in every snapshot."""
    size = policies_bytes(policies)
    if size > POLICIES_MAX_BYTES:
        raise ConfigurationError(
            "policy",
            f"the policies would take {size} bytes of every agent's snapshot (at most "
            f"{POLICIES_MAX_BYTES}): shorten record_errors, ignore_errors or reporters",
        )


#: Unicode categories refused in a reason: controls (newlines, terminal escapes), format
#: characters (bidirectional overrides) and line separators. A reason is shown in tables,
#: logs and terminals, where these would forge lines or rewrite the screen.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def check_reason(reason: str) -> None:
    """Raises ConfigurationError when ``reason`` holds control or line-breaking characters."""
    found = sorted({c for c in reason if unicodedata.category(c) in _CONTROL_CATEGORIES})
    if found:
        shown = ", ".join(c.encode("unicode_escape").decode() for c in found)
        raise ConfigurationError("reason", f"must be one line of printable text (it holds {shown})")


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
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        #: Monotonic seconds for every decision made here (a simulation passes its own).
        self.clock = clock
        self.prefix = prefix.rstrip("/")
        self.instance_id = instance_id
        self.tick_interval = tick_interval
        #: Leases sent per turn of the loop (None: a round's leases all in one turn).
        self.lease_slice: int | None = LEASE_SLICE
        self.ping_interval = ping_interval
        self.policies = PolicyBook(self.prefix, wall)
        self.grant_numbers = GrantNumbers()
        self.breakers = FleetBreakers(
            self.policies.policy_of, clock=clock, wall=wall, numbers=self.grant_numbers
        )
        self.stats = FleetStatistics()
        self.hub = Hub(wall)
        #: Called with (agent id, summary) for every outcome summary an agent sends here.
        self.outcome_listeners: list[Callable[[str, pb.OutcomeSummary], None]] = []
        self.store_ok = False
        self._checked = False  # whether a health check ended (store_ok then says something)
        self._published = False
        #: Names of background tasks that ended with an error (health stays down).
        self.failed_tasks: list[str] = []
        #: Ticks that raised (the tick loop goes on; each kind is logged once in a row).
        self.tick_errors = 0
        self.health_listeners: list[Callable[[bool], None]] = []
        #: Set by enable_leadership (replicas on one etcd); None = this one always decides.
        self.leadership: Leadership | None = None
        #: Every replica's agents (set when serving; None: this replica's own only).
        self.roster: FleetRoster | None = None
        self.relay: LeaderRelay | None = None
        #: The leader's states where they differ from this replica's, told its agents (following).
        self.leader_states: LeaderStates | None = None
        #: The outcome batches this replica's engine counted (each is counted once).
        self.ledger = OutcomeLedger(clock=self.clock)
        #: The batches this replica took while following: each is passed on however often
        #: it comes, but shows once in this replica's own figures.
        self.relayed = OutcomeLedger(clock=self.clock)
        self.lease_epochs = LeaseEpochs(
            f"{self.prefix}/{LEASE_EPOCH_RECORD}",
            instance_id,
            self._leader_epoch,
            lambda: self.takeover_read(),
            lambda key, value: self.writer.record_lease_epoch(key, value),
            self.policies.refused,
            wall,
            clock=clock,
        )
        #: follower relay id -> the session of its process last connected here
        self._relay_sessions: dict[str, str] = {}
        self.capacity = CapacityLeaser(
            self.policies.all,
            self.hub.send_to_agent,
            epoch=self.lease_epochs.term_epoch,
            lease_epoch=self.lease_epochs.epoch,
            clock=clock,
            wall=wall,
            leased_before=self.lease_epochs.leased_before,
            earlier_until=self.lease_epochs.earlier_until,
            earlier_epoch=self.lease_epochs.earlier_epoch,
            may_lease=self.lease_epochs.may_lease,
            recorded_horizon=self.lease_epochs.held.longest,
        )
        self.lease_epochs.horizons = partial(in_force, self.capacity)
        self.admission = ServiceAdmission(self.policies, self.breakers, clock=clock)
        self.reports = ReportGate(self.policies.policy_of, clock=clock)
        self.writer = StateWriter(
            store, self.breaker_key, self.breakers, self.policies, lambda: self._set_store_ok(False), clock
        )
        self.sync = StoreSync(
            store,
            self.prefix,
            self.policies,
            self.breakers,
            self.writer,
            self._set_store_ok,
            self._loaded,
            clock,
        )
        self.writer.on_reload = self.sync.reload
        # (before the first health check, a write is sent: the store is not known away)
        self.writer.reachable = lambda: self.store_ok or not self._checked
        self.writer.on_lost_data = self.sync.lost_data
        self.sync.records[self.lease_epochs.key] = self.lease_epochs.apply
        #: Which etcd history this replica's revisions rest on (see :mod:`.store_history`).
        self.history = StoreHistory(f"{self.prefix}/{HISTORY_KEY}", store.get, self.writer.record_history)
        self.sync.records[self.history.key] = self.history.apply
        self.sync.absent_told.add(self.history.key)
        self.sync.lost_data_listeners.append(self.history.lost_data)
        self.history.on_change = self._history_changed
        self.history.on_lost = self.sync.lost_data
        self.sync.loss_signs.append(self.history.loss_in)
        # no record, and a history leased before: an unknown past (see :mod:`.lease_epoch`)
        self.lease_epochs.history_leased = lambda: self.history.leased
        self.lease_epochs.mark = self.history.mark_leased
        #: The history token read on each health ping, and the leader's check that the
        #: store holds every key it holds (see :mod:`.held_keys`).
        self.token_watch = TokenWatch(store, self.history, self.sync.resync)
        self.held_keys = HeldKeysCheck(
            store,
            [self.policies.prefix, f"{self.prefix}/breakers/", shadow_book(self.prefix).prefix],
            self._held_revisions,
            lambda: self.leading and self.sync.loaded.is_set() and not self.writer.restore_pending,
            lambda: self.writer.losses,
            self.sync.lost_data,
            unheld=self._policies_known,
        )
        self.writer.kept_records = self.lease_epochs.restorable
        self.takeover_read = TakeoverRead(
            self._leader_epoch,
            self._leader_created,
            self.sync.loaded.is_set,
            lambda: self.sync.delivered,
            self._read_lease_epoch,
            self.lease_epochs.apply,
        )
        #: Candidate policies in shadow mode, and how they fare (see :mod:`.shadow`).
        self.shadows = shadow_book(self.prefix, wall)
        self.shadows.errors = self.policies.errors  # one list of refused values, shown by stats
        self.trials = ShadowTrials(self._breaker_state, clock)
        self.sync.shadows = self.shadows
        self.shadows.listeners.append(self._on_shadow)
        self.outcome_listeners.append(self.trials.record)
        self.audit = AuditLog(store, self.prefix, instance_id, retention, wall)
        self.audit.key_of = self._recorded_key
        #: Agents holding a breaker newer than the store say so (see :mod:`.held_newer`).
        self.held_newer = HeldNewer(store, self.breaker_key, self.audit, self.sync.loaded.is_set, clock)
        self.writer.shadows = self.shadows
        self.audit_keeper = AuditKeeper(
            self.audit,
            self.writer.change_of,
            refuses=self.writer.refuses,
            refused_keys=self.policies.refused_keys,
        )
        self.writer.audit = self.audit
        self.writer.on_recorded = self.audit_keeper.recorded
        self.sync.is_record = self.audit.is_record
        self.sync.recorded_good = RecordedGood(self.audit, self.policies).before
        self.sync.on_outside = self.audit_keeper.outside
        #: Grows with every change of the fleet state this replica pushes.
        self.version = 0
        #: Breakers a snapshot takes per turn of the event loop (see :mod:`.snapshot_build`).
        self.snapshot_slice = SNAPSHOT_SLICE
        #: Snapshots for every agent being built.
        self._snapshots: dict[asyncio.Task[None], PendingSnapshot] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.telemetry = (
            FleetTelemetry(telemetry, self.breakers, self.hub, self.stats) if telemetry is not None else None
        )
        if self.telemetry is not None:
            self.policies.on_reload = self.telemetry.reload
        self._bad_keys: set[tuple[str, int]] = set()
        if isinstance(store, EtcdStore):
            store.on_bad_key = self._bad_key
        self.policies.listeners.append(self._on_policy)
        self.breakers.change_listeners.append(self._on_breaker)
        self.breakers.view_complete = lambda: self.view_complete
        self.breakers.grant_listeners.append(self._on_grant)
        self.recovery_checks = RecoveryChecks(self.breakers, lambda: self.leading, clock=clock)
        self.grant_pause = GrantPause(self.breakers, lambda: self.leading, self._relayed_mark, self._cut_off)

    # -- keys ------------------------------------------------------------------

    def breaker_key(self, name: str) -> str:
        return f"{self.prefix}/breakers/{name}"

    def _held_revisions(self) -> dict[str, int]:
        """Every policy, candidate and breaker key held, at the store revision known for it."""
        held = {
            book.key(p.service): book.revision_of(p.service)
            for book in (self.policies, self.shadows)
            for p in book.all()
        }
        held.update((self.breaker_key(name), revision) for name, revision in self.breakers.revisions.items())
        return held

    def _policies_known(self) -> tuple[str, int, set[str]]:
        """The policies' prefix, the revision the watch delivered through, and every policy
        key held or refused now (see :mod:`.held_keys`)."""
        keys = {self.policies.key(p.service) for p in self.policies.all()}
        return self.policies.prefix, self.sync.delivered, keys | set(self.policies.refused_keys())

    # -- leadership ------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this replica decides transitions now."""
        return self.leadership is None or self.leadership.leading

    def _relayed_mark(self, name: str, generation: int) -> bool | None:
        """What the leader says on a follower's link of ``name`` (see :mod:`.grant_pause`)."""
        return self.relay.marks.get(name, generation) if self.relay is not None else None

    def _cut_off(self) -> bool:
        """Whether a follower with no link up can learn no leader: etcd is away for it."""
        return self._checked and not self.store_ok

    def enable_leadership(
        self,
        address: str,
        *,
        ttl: int = 3,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        connect: RelayConnect | None = None,
    ) -> None:
        """Run as one of several replicas: campaign for leadership, relay to the leader
        (over TLS when ``credentials`` are given; ``connect`` replaces the gRPC link)."""
        self.leadership = Leadership(
            self.store,
            self.prefix,
            self.instance_id,
            address,
            ttl=ttl,
            on_change=self._on_leadership,
            clock=self.clock,
            ready=self.sync.loaded.is_set,
        )
        self.relay = LeaderRelay(
            self.leadership,
            self.hub,
            token=token,
            credentials=credentials,
            connect=connect,
            hold_secs=self.capacity.hold_secs,
            clock=self.clock,
            wall=self.lease_epochs.wall,
            probe_timeout=lambda service: self.policies.policy_of(service).timeout_secs,
            own_cluster=lambda: self.sync.cluster_id,
        )
        self.writer.fence = self.leadership
        self.breakers.lead_check = self.leadership.lease_valid
        self.relay.marks.on_change = self.grant_pause.relayed_changed
        self.relay.before_grant = self.grant_pause.unmark
        states = self.leader_states = LeaderStates(
            self._own_state,
            self.breakers.names,
            self._cut_off,
            lambda: self.leading,
            self.clock,
            history=lambda: self.history.token,
        )
        states.on_change = self._push_in_force
        self.writer.leader_saw_loss = lambda: states.says_history(self.history.token)
        self.relay.marks.listeners.append(states)

    def _own_state(self, name: str) -> tuple[int, int, int] | None:
        """(revision, generation, state) of this replica's own state of ``name`` (None: none);
        a malformed record's revision is none (``FleetBreakers.unread``)."""
        found = self.breakers.find(name)
        return None if found is None else (self.breakers.basis(name), found.generation, int(found.state))

    def _in_force(self, message: pb.Breaker) -> pb.Breaker:
        """What this replica's agents are told of its breaker ``message``: the leader's
        state where it differs, while following (see :mod:`.leader_states`)."""
        return message if self.leader_states is None else self.leader_states.in_force(message)

    def _push_in_force(self, name: str) -> None:
        """What this replica's agents are to be told of ``name`` may have changed (not its
        own state of it, which is pushed as it changes): push it to them."""
        if self.breakers.find(name) is not None:
            own = self.breakers.to_proto(name)
        else:
            own = pb.Breaker(name=name, state=pb.BREAKER_STATE_CLOSED, reason="no such breaker here")
        self.version += 1
        self.hub.broadcast(pb.ConnectResponse(breaker=self._in_force(own)))

    def _leader_epoch(self) -> int:
        return self.leadership.term if self.leadership is not None else 0

    def _leader_created(self) -> int:
        return self.leadership.epoch if self.leadership is not None else 0

    async def _read_lease_epoch(self) -> bytes | None:
        # with the history token's mark: no record and a history leased is an unknown past
        token = await self.store.get(self.history.key)
        self.history.read_directly(token.value if token is not None else None)
        entry = await self.store.get(self.lease_epochs.key)
        return entry.value if entry is not None else None

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            assert self.leadership is not None
            self.breakers.took_over()
            overwrite_refused(self.writer)  # held over a record that does not parse: written
            self._restate_to_relays()
            if self.relay is not None:  # outcomes gathered before this replica knew it leads
                for key, agent_id, summaries in self.relay.drain():
                    if key is None or self.ledger.first_time(key):
                        self.count_batch(key, agent_id, summaries)
                self.relay.acks.release_all()  # counted here: this replica's ledger has them
        else:
            self.breakers.stepped_down()
            # What this replica holds may be a state the store never had: take the store's
            # again. Decisions not stored stay pending (see writes.StateWriter). Not when it
            # steps down because it stops: nothing will read it.
            if not self._stopping:
                self.sync.reload()
        self.writer.wake()

    def _restate_to_relays(self) -> None:
        """This replica has begun to lead: a follower whose relay was linked here while it
        followed (cut off from etcd, it took it for the leader still) holds what it said
        then as the leader's word — the etcd history among it, which a follower that found
        the store's data lost waits to hear from its leader before it hands the restore
        over (``StateWriter.leader_saw_loss``). A snapshot on those links says it again."""
        relays = [sub for sub in self.hub.agents.values() if sub.replica]
        if not relays:
            return
        self.version += 1
        message = pb.ConnectResponse(snapshot=self.snapshot(to_all=True))
        for sub in relays:
            sub.push(message)

    def first_time(self, key: BatchKey) -> bool:
        """Whether this replica sees the outcome batch ``key`` names for the first time: the
        deciding replica counts each batch once (see ``outcome_ledger``); a follower passes
        every one on, by name (:attr:`passes_on`), and shows each once in its own figures."""
        if self.passes_on:
            return self.relayed.first_time(key)
        return self.ledger.first_time(key)

    @property
    def passes_on(self) -> bool:
        """Whether outcome batches go on to the leader (this replica follows)."""
        return not self.leading and self.relay is not None

    def ledger_stats(self, stats: pb.ErrorStatistics) -> pb.ErrorStatistics:
        """``stats`` with the batches this replica did not count (or show) again."""
        stats.outcome_batches_resent = self.ledger.resent + self.relayed.resent
        stats.outcome_batches_too_old = self.ledger.too_old + self.relayed.too_old
        stats.outcome_sessions_held = len(self.ledger) + len(self.relayed)
        self.recovery_checks.add_to(stats)
        return stats

    def record_batch(
        self, key: BatchKey | None, agent_id: str, summaries: list[pb.OutcomeSummary], stream: int = 0
    ) -> bool:
        """Count an agent's batch here, or pass it on to the leader under its name (True);
        ``stream``: the id of the agent's stream it came on."""
        if self.leading or self.relay is None:
            self.count_batch(key, agent_id, summaries)
            return False
        self.relay.add_batch(key, agent_id, summaries, stream)
        return True

    def acknowledge(self, stream: Subscriber, sequence: int, *, relayed: bool) -> None:
        """Acknowledge an agent's batch ``sequence``: at once when this replica counted it,
        once the leader did when it was ``relayed`` (the agent sends it again until then)."""
        if relayed and self.passes_on and self.relay is not None:
            self.relay.owe_ack(stream, sequence)
        else:
            stream.push(pb.ConnectResponse(outcome_ack=pb.OutcomeAck(sequence=sequence)))

    def stream_ended(self, stream: Subscriber) -> None:
        """An agent's stream ended: it is owed no acknowledgement any more."""
        if self.relay is not None:
            self.relay.stream_ended(stream)

    def count_batch(self, key: BatchKey | None, agent_id: str, summaries: list[pb.OutcomeSummary]) -> None:
        """Count the batch ``key`` in this replica's engine (the ledger was asked first)."""
        for summary in summaries:
            try:
                self.breakers.record(agent_id, summary, key.agent_id if key is not None else "")
            except Exception:  # one service's bad record must not stop the others' (nor the stream)
                _log.exception("outcomes of %s for %s not counted", agent_id, summary.service)

    def holder_said(self, agent_id: str) -> None:
        """``agent_id``'s first batch on a new stream was taken: it has said which probes
        of its streams before still run (the permits of the others are free)."""
        if self.leading or self.relay is None:
            self.breakers.holder_said(agent_id)
        else:
            self.relay.holder_said(agent_id)

    def request_probe(self, agent_id: str, service: str, *, relay: bool = False) -> None:
        """``agent_id`` asks for a probe permit (``relay``: a follower, for one of its agents)."""
        if self.leading or self.relay is None:
            self.breakers.request_probe(agent_id, service, relay=relay)
        else:
            self.relay.ask_probe(agent_id, service)
        self.answer_probe(agent_id, service)

    @property
    def view_complete(self) -> bool:
        """Whether this replica's fleet state is the store's: it has been loaded once. Until
        then a breaker it lacks (or holds CLOSED, never decided here) may be anything in
        the store, and it says no such state to an agent as the truth."""
        return self.sync.loaded.is_set()

    def answer_probe(self, agent_id: str, service: str) -> None:
        """An agent that asks for a probe holds a state this replica may not: unless the
        breaker is HALF_OPEN (a grant answers then), tell it the state in force — CLOSED for
        a breaker this replica does not hold, without creating one. A replica whose view is
        not complete says nothing: the agent keeps what it holds, as from a partial
        snapshot (what this replica decided itself was pushed when decided)."""
        if not self.view_complete:
            return
        breaker = self.breakers.find(service)
        if breaker is None:
            state = pb.Breaker(name=service, state=pb.BREAKER_STATE_CLOSED, reason="no such breaker here")
        else:
            state = self.breakers.to_proto(service)
        if self.leader_states is not None:  # one agent is answered: the others hear what ends
            state = self.leader_states.in_force(state, to_all=False)
        if state.state != pb.BREAKER_STATE_HALF_OPEN:
            self.hub.send_to_agent(agent_id, pb.ConnectResponse(breaker=state))

    def record_demand(self, agent_id: str, demand: pb.CapacityDemand) -> None:
        if self.leading or self.relay is None:
            # above this leader's, its leases would all be ignored (a claim for a limit
            # not fleet-shared names no lease: a client may name any service)
            if demand.held_epoch and (demand.service, demand.resource) in self.capacity.limits:
                self.lease_epochs.agent_holds(demand.held_epoch)
            self.capacity.demand(agent_id, demand)
        else:
            self.relay.demand(agent_id, demand)

    def agent_joined(self, agent_id: str, name: str, *, relay_session: str = "") -> None:
        """A stream of agent process ``agent_id`` (agent id ``name``) opened: a predecessor
        process of that agent id gone without a goodbye is not waited for (a restart). A
        follower's relay (``relay_session``: its process's session) of another process than
        before is a restart too, but the agents its predecessor kept may still be spending:
        what it may have let them spend stays aside until their horizon."""
        self.breakers.joined(agent_id)
        if relay_session:
            before = self._relay_sessions.get(agent_id)
            self._relay_sessions[agent_id] = relay_session
            if before is not None and before != relay_session:
                self.capacity.relay_restarted(agent_id)
        self.capacity.release_predecessors(name, keep=agent_id)
        if self.relay is not None:
            self.relay.leases.release_predecessors(name, keep=agent_id)

    def agent_left(self, agent_id: str, *, relay: bool = False, name: str = "") -> None:
        """An agent's (or a follower ``relay``'s) last stream here ended."""
        self.breakers.release_agent(agent_id, relay=relay)
        self.capacity.forget(agent_id)
        if name and self.hub.processes_named(name):  # its successor (or twin) is here
            self.capacity.release_predecessors(name, keep="")
        self.reports.agent_left(agent_id)
        if self.relay is not None:
            self.relay.agent_left(agent_id)
            if name and self.hub.processes_named(name):
                self.relay.leases.release_predecessors(name, keep="")

    # -- lifecycle -------------------------------------------------------------

    async def start(self, load_timeout: float = 10.0) -> None:
        """Start the background loops; waits up to ``load_timeout`` for the first load
        (when the store is down it serves defaults and catches up later)."""
        self._stopping = False
        loops = [self.sync.run, self.writer.run, self._tick_loop, self._health_loop, self._forget_loop]
        loops += [self.audit_keeper.run, self.recovery_checks.run, self.history.run, self.held_keys.run]
        loops.append(self.held_newer.run)
        if self.leadership is not None and self.relay is not None:
            loops += [self.leadership.run, self.relay.run]
        for loop in loops:
            task = asyncio.create_task(loop(), name=loop.__qualname__)
            task.add_done_callback(self._task_ended)
            self._tasks.append(task)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sync.loaded.wait(), load_timeout)
        if self.leadership is not None and self.sync.loaded.is_set():  # let the first campaign settle
            deadline = self.clock() + 2.0
            while self.leadership.leader_id is None and self.clock() < deadline:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stopping = True  # a loop that ends from now on ends on purpose
        await self.flush(timeout=2.0)
        if self.leadership is not None:
            await self.leadership.resign()
        left = await end_tasks(self._tasks, STOP_TASKS_SECS)
        if left:
            _log.error("background tasks %s did not end when cancelled; stopping without them", left)
        self._tasks.clear()
        for task, pending in list(self._snapshots.items()):  # their streams end without it
            task.cancel()
            pending.abandon()
        self.hub.close_all()

    async def flush(self, timeout: float) -> bool:
        """Wait until every decided transition is stored (or ``timeout``)."""
        return await self.writer.flush(timeout)

    # -- operator writes (acknowledged only once stored) -----------------------

    async def set_breaker_state(
        self, name: str, state: BreakerState, reason: str, author: Author = ENGINE
    ) -> pb.Breaker:
        """Force a breaker's state; see :meth:`StateWriter.set_breaker_state`.

        Raises:
            ConfigurationError: ``reason`` holds control characters.
        """
        check_reason(reason)
        return await self.writer.set_breaker_state(name, state, reason, author)

    async def put_policy(
        self, policy: ServicePolicy, expected_revision: int = 0, author: Author = ENGINE
    ) -> int | None:
        """Store a policy; see :meth:`StateWriter.put_policy`."""
        return await self.writer.put_policy(policy, expected_revision, author)

    async def delete_policy(self, service: str, author: Author = ENGINE) -> bool:
        return await self.writer.delete_policy(service, author)

    # -- timers and health -----------------------------------------------------

    # -- forgetting idle breakers ----------------------------------------------

    async def _forget_loop(self) -> None:
        # at least once a second: a policy's endpoint_idle_secs may be short
        every = max(0.05, min(1.0, self.admission.limits.idle_secs / 10))
        await forget_idle(self.admission, self.forget_breaker, every)

    async def forget_breaker(self, name: str) -> None:
        """Drop an idle breaker no policy names; the leader also deletes its stored key."""
        revision = self.breakers.revisions.get(name, 0)
        if self.writer.is_pending(name):
            return
        self.breakers.forget(name)
        if not revision or not self.leading:
            return
        try:
            write = Write(self.breaker_key(name), None, revision)
            result = await self.writer.commit([write], fenced=True, action="breaker.forget")
        except StoreUnavailable as err:
            _log.warning("stored breaker %s not deleted (%s); a restart loads it again", name, err)
            return
        if not result.ok:
            _log.info("stored breaker %s not deleted (%s)", name, result.status.name.lower())

    async def _tick_loop(self) -> None:
        last_error = ""
        while True:
            try:
                if self.leading:
                    await self._breakers_tick()
                    await self._lease_round()
                self.grant_pause.due(self.clock())
                if self.leader_states is not None:
                    self.leader_states.due()
            except Exception as err:  # one bad value must not end the breakers' and leases' timers
                self.tick_errors += 1
                if repr(err) != last_error:  # once per kind of error, not 50 times a second
                    _log.exception("tick failed (%d so far); going on", self.tick_errors)
                last_error = repr(err)
            await asyncio.sleep(self.tick_interval)

    async def _breakers_tick(self) -> None:
        # A burst (thousands of OPEN whose wait ends at once) is worked in slices of the
        # clock, each one's pushes and writes queued before the loop turns, as a load is.
        self.breakers.tick(TICK_SLICE_SECS)
        while self.leading and self.breakers.tick_cut:
            await asyncio.sleep(0)
            if self.leading:
                self.breakers.tick(TICK_SLICE_SECS)

    async def _lease_round(self) -> None:
        # Leases go out half a period ahead: sent in slices, a round of 10,000 never holds
        # the loop (breaker pushes, outcomes) for the whole round.
        self.capacity.tick(send=False)
        while self.capacity.queued:
            self.capacity.send_queued(self.lease_slice)
            await asyncio.sleep(0)

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.sync.check()
                if not self.store_ok and self._checked:  # not on the first check: it was never down
                    _log.info("store reachable again")
                self._checked = True
                if not self.store_ok:
                    self.writer.wake()
                self._set_store_ok(True)
            except StoreUnavailable:
                self._checked = True
                self._set_store_ok(False)
            else:
                with contextlib.suppress(StoreUnavailable):
                    await self.token_watch.check()
            await asyncio.sleep(self.ping_interval)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task not in self._tasks or self._stopping:
            return  # stopped on purpose
        self.task_failed(task)

    def task_failed(self, task: asyncio.Task[None]) -> None:
        """A background task ended by itself: say so, and stop serving (health goes down)."""
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        _log.error("background task %s ended (%r): not serving", task.get_name(), error, exc_info=error)
        self.failed_tasks.append(task.get_name())
        self._set_store_ok(self.store_ok)

    def _bad_key(self, key: str, revision: int) -> None:
        # Both the load and the watch, of the state and of the roster, see the same key.
        if (key, revision) in self._bad_keys:
            return
        if len(self._bad_keys) >= 1000:
            self._bad_keys.clear()
        self._bad_keys.add((key, revision))
        self.policies.refused(key, "the key is not UTF-8: ignored")

    @property
    def serving(self) -> bool:
        """What gRPC health reports (the same as :attr:`healthy`)."""
        return self.healthy

    @property
    def healthy(self) -> bool:
        """Serving: the store answers and every background task runs."""
        return self.store_ok and not self.failed_tasks

    def _set_store_ok(self, ok: bool) -> None:
        self.store_ok = ok
        healthy = self.healthy
        if healthy == self._published:
            return
        self._published = healthy
        for listener in list(self.health_listeners):
            listener(healthy)

    # -- listeners -------------------------------------------------------------

    def unknown_breaker(self, name: str, create: bool = False) -> str | None:
        """Why the breaker ``name`` may not be forced (a likely typo; see
        :mod:`.breaker_names`), or None."""
        return unknown_breaker(
            name,
            create,
            lambda service: self.policies.stored(service) is not None,
            lambda breaker: self.breakers.find(breaker) is not None,
            lambda: {*self.breakers.names(), *(p.service for p in self.policies.all())},
        )

    def _recorded_key(self, kind: str, name: str) -> str | None:
        """The stored key an audit record of ``kind`` about ``name`` describes."""
        keys = {"policy": self.policies.key, "shadow": self.shadows.key, "breaker": self.breaker_key}
        return keys[kind](name) if kind in keys else None

    def _loaded(self) -> None:
        self.audit_keeper.loaded(self.sync.load_revision)
        # Agents replace what they hold with the store's state (the first snapshot they got
        # may have been partial, or a reload may have dropped something). Not built with no
        # stream to take it: of 15,000 breakers it held the loop 1.7 s at load 40, and the
        # leader lease lapsed behind it (a stream connecting later gets its own).
        self.version += 1
        if self.hub.agents:
            self.broadcast_snapshot()

    def _history_changed(self) -> None:
        """The history this replica's revisions rest on changed: it says so on every link
        at once (in order with its pushes: one resting on a new history's revision follows
        the snapshot that stops saying the old one). Not only while leading: a replica
        restarted at a leader's address is linked to by followers before it leads, and
        what its first snapshot said (no history) would stand when it comes to lead."""
        if self.hub.agents:
            self.version += 1
            self.broadcast_snapshot()

    def _on_breaker(self, message: pb.Breaker, old: BreakerState | None, move: Transition | None) -> None:
        # Agents first: the push is queued to every stream before the write is started (the
        # streams' tasks run before the writer's), so a decision reaches agents without
        # waiting on etcd. What a write that fails changes is pushed again (see writes).
        self.version += 1
        self.hub.broadcast(pb.ConnectResponse(breaker=self._in_force(message)))
        if move is not None:  # decided here: store it
            self.writer.decided(message.name)
            if self.telemetry is not None:
                self.telemetry.transition(message, move)
        if message.state == pb.BREAKER_STATE_OPEN and old is not BreakerState.OPEN:
            self.stats.add_breaker_open()
        self.hub.notify_watchers(message, old)

    def _on_policy(self, service: str, policy: ServicePolicy | None) -> None:
        self.version += 1
        self.breakers.policy_changed(service)
        self.grant_pause.policy_changed(service)
        self.recovery_checks.policy_changed()
        self.capacity.sync_policies()
        update = pb.PolicyUpdate(service=service, deleted=policy is None)
        if policy is not None:
            update.policy.CopyFrom(policy_to_proto(policy))
        self.hub.broadcast(pb.ConnectResponse(policy=update))

    def _on_shadow(self, service: str, policy: ServicePolicy | None) -> None:
        self.version += 1
        self.trials.candidate_changed(service, policy)
        update = pb.ShadowPolicyUpdate(service=service, cleared=policy is None)
        if policy is not None:
            update.policy.CopyFrom(policy_to_proto(policy))
        self.hub.broadcast(pb.ConnectResponse(shadow_policy=update))

    def _breaker_state(self, service: str) -> BreakerState | None:
        found = self.breakers.find(service)
        return None if found is None else found.state

    def _on_grant(self, agent: str, grant: pb.ProbeGrant) -> None:
        self.grant_numbers.stamp(grant)
        if not self.hub.send_to_agent(agent, pb.ConnectResponse(probe_grant=grant)):
            asyncio.get_running_loop().call_soon(lambda: self.breakers.undelivered(agent, grant))

    # -- snapshot for a new stream ---------------------------------------------

    def snapshot(
        self, services: tuple[str, ...] = (), max_bytes: int = SNAPSHOT_MAX_BYTES, *, to_all: bool = False
    ) -> pb.Snapshot:
        """Every policy and breaker, kept under ``max_bytes`` (the breakers of ``services``,
        the agent's own, and those not CLOSED come first); ``partial`` until the store has
        been loaded once. ``to_all``: it goes to every agent (else to one stream: a leader's
        state it ends telling is pushed to the others, see :mod:`.leader_states`). Built at
        once: a stream's is built by :meth:`snapshot_in_slices`."""
        return self._snapshot_build(services, max_bytes, to_all).finish()

    async def snapshot_in_slices(
        self, services: tuple[str, ...] = (), max_bytes: int = SNAPSHOT_MAX_BYTES
    ) -> pb.Snapshot:
        """:meth:`snapshot` for one new stream, :attr:`snapshot_slice` breakers per turn of
        the event loop (see :mod:`.snapshot_build`)."""
        return await self._settled_snapshot(services, max_bytes, False)

    async def _settled_snapshot(self, services: tuple[str, ...], max_bytes: int, to_all: bool) -> pb.Snapshot:
        """A snapshot built in slices whose etcd history is still this replica's when it is
        done: one whose history changed during the build may hold breakers resting on the
        new history's revisions under the old token, and is built again (see
        :meth:`_history_changed`)."""
        while True:
            snapshot = await self._snapshot_build(services, max_bytes, to_all).run(self.snapshot_slice)
            if snapshot.history == self.history.token:
                return snapshot

    def broadcast_snapshot(self) -> None:
        """A snapshot to every agent, in its place in every stream's queue now, built in
        slices behind (see :class:`.snapshot_build.PendingSnapshot`)."""
        pending = PendingSnapshot()
        extra = self.breakers.count() + self.snapshot_slice
        for sub in list(self.hub.agents.values()):
            sub.queue.widen(extra)
        self.hub.broadcast(pending)
        task = asyncio.get_running_loop().create_task(
            pending.fill(self._settled_snapshot((), SNAPSHOT_MAX_BYTES, True))
        )
        self._snapshots[task] = pending
        task.add_done_callback(self._snapshots.pop)

    def _snapshot_build(self, services: tuple[str, ...], max_bytes: int, to_all: bool) -> SnapshotBuild:
        head = pb.Snapshot(
            policies=self._snapshot_policies(services),
            control_plane_id=self.instance_id,
            version=self.version,
            partial=not self.view_complete,
            shadow_policies=[policy_to_proto(p) for p in self.shadows.all()],
            history=self.history.token,
            read_revision=self.sync.delivered if self.view_complete else 0,
            store_cluster=self.sync.cluster_id,
        )
        return SnapshotBuild(
            head, self.breakers, self.leader_states, self.grant_pause.sent, services, max_bytes, to_all=to_all
        )

    def _snapshot_policies(self, services: tuple[str, ...]) -> list[policy_pb2.ServicePolicy]:
        # Writes keep the policies under POLICIES_MAX_BYTES; should the store hold more
        # (written before that bound), the agent's own services come first.
        mine = set(services)
        ranked = sorted(self.policies.all(), key=lambda p: (p.service not in mine, p.service))
        kept: list[policy_pb2.ServicePolicy] = []
        size = 0
        for policy in ranked:
            message = policy_to_proto(policy)
            size += message.ByteSize() + 8
            if size > POLICIES_MAX_BYTES:
                _log.warning("snapshot left out policies from %s on (size bound)", policy.service)
                break
            kept.append(message)
        return kept
