"""A follower replica's link to the leader: its agents' outcomes and probe requests go up,
probe permits come back down.

The follower talks to the leader like an agent does — one Connect stream, agent id
``replica.<instance>`` — so the leader merges every replica's outcomes into its decisions
without any extra etcd traffic. Each agent batch goes up as it came, named by its
origin (agent, session, sequence), so the leader counts it once even when the agent sent
it again over another replica; batches are kept while the link is down (during a
failover) and sent once a leader answers, so failures reported meanwhile still count.
What is kept is merged per agent session (``relay_spans``): bounded by the sessions, and
never counted twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from mission_control.client.clock_offset import ClockOffset, disagree
from mission_control.client.probes import GrantsTaken
from mission_control.client.view import Tally, UnackedBatches
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

from .leader_cluster import ForeignLeader, LeaderCluster
from .loop_tasks import wait_event
from .outcome_ledger import BatchKey, named, origin_key, origin_of
from .relay_acks import AckTarget, OwedAcks
from .relay_leases import FollowerLeases
from .relay_permits import RelayedPermits, passed_on
from .relay_spans import HeldSpans
from .relayed_marks import RelayedMarks

if TYPE_CHECKING:
    from .hub import Hub
    from .leadership import Leadership

#: What a relay holds for the leader: one agent batch (named) or its own sums (None).
Held = tuple[BatchKey | None, str, list[pb.OutcomeSummary]]

_log = logging.getLogger("mission_control.server.relay")

#: Bounds on what is kept for the leader while the link to it is down.
MAX_ASKED = 1024
MAX_WAITING = 256
#: Batches sent to the leader and not acknowledged yet: past it nothing more is sent (what
#: agents report meanwhile is merged per agent session, see ``relay_spans``).
MAX_IN_FLIGHT = 1024
#: A leader that vanished without closing the connection is noticed within ~15 s (a ping
#: every 10 s, and 5 s for the answer to it or to any other ping: see server_options).
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
]

#: Opens a Connect stream to the leader at an address: (address, requests, metadata) ->
#: responses. Closing the responses' iterator ends the stream.
RelayConnect = Callable[
    [str, AsyncIterator[pb.ConnectRequest], tuple[tuple[str, str], ...] | None],
    AsyncIterator[pb.ConnectResponse],
]


class LeaderRelay:
    """A follower's link to the leader.

    Args:
        leadership: who leads (the link follows it).
        hub: this replica's agents' streams (grants and leases go to them).
        credentials: TLS for the link (the replica's own certificate); None = plaintext.
        connect: opens the stream to the leader (gRPC unless given: a simulation passes
            an in-memory one).
        hold_secs, clock: how long an agent gone without a goodbye may spend a fleet-shared
            limit (see :class:`.relay_leases.FollowerLeases`), on this monotonic clock.
        wall: epoch seconds (what agents' epoch claims are bounded on).
        probe_timeout: a service's policy timeout (how long past its TTL the leader holds
            a probe permit: see :class:`.relay_permits.RelayedPermits`).
    """

    def __init__(
        self,
        leadership: Leadership,
        hub: Hub,
        token: str | None = None,
        flush_interval: float = 0.02,
        credentials: grpc.ChannelCredentials | None = None,
        connect: RelayConnect | None = None,
        hold_secs: Callable[[str, str], float | None] = lambda service, resource: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        probe_timeout: Callable[[str], float] = lambda service: 30.0,
        own_cluster: Callable[[], int] = lambda: 0,
    ) -> None:
        self.leadership = leadership
        self.hub = hub
        self._credentials = credentials
        self._connect: RelayConnect = connect or self._grpc_connect
        self.agent_id = f"replica.{leadership.instance_id}"
        self.session_id = uuid.uuid4().hex
        self.flush_interval = flush_interval
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._tallies: dict[str, Tally] = {}
        #: Agent batches not sent yet (and the names of those not acknowledged).
        self._batches = HeldSpans()
        self._resend = False
        #: Services whose agents asked for a probe since the last link (a set: bounded by
        #: the services asked about, however long the link is down).
        self._asked: dict[str, None] = {}
        self._waiting: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        #: The permits relayed to this replica's agents, by grant.
        self.permits = RelayedPermits(clock, probe_timeout)
        self._probe_timeout = probe_timeout
        self._wall = wall
        self._grants = GrantsTaken()
        self._wake = asyncio.Event()
        #: What this replica's agents want of the fleet-shared limits, and their leases.
        self.leases = FollowerLeases(hold_secs, clock, wall)
        self._clock = clock
        self._epoch = 0
        self._demand_epoch = -1
        self._unacked = UnackedBatches(MAX_IN_FLIGHT)
        #: Batches :attr:`_batches` gave up, as far as said to the leader.
        self._dropped = 0
        #: The highest sequence of a batch sent to the leader (0: none yet).
        self._last_sent = 0
        #: Agents' acknowledgements, due once the leader acknowledged their batches.
        self.acks = OwedAcks()
        #: The HALF_OPENs the leader says it can grant no permit for (see :mod:`.grant_pause`).
        self.marks = RelayedMarks()
        #: Called with a service before a permit of it is handed to an agent here.
        self.before_grant: Callable[[str], None] | None = None
        self.connected = False
        #: The leader the last link went to.
        self._leader_address: str | None = None
        #: The leader's clock as measured from its messages (``sent_at``).
        self._offset = ClockOffset()
        #: A leader of another etcd cluster is refused (see :mod:`.leader_cluster`).
        self.cluster = LeaderCluster(own_cluster)

    # -- from this replica's agents ---------------------------------------------

    def add_batch(
        self, key: BatchKey | None, agent_id: str, summaries: list[pb.OutcomeSummary], stream: int = 0
    ) -> None:
        """An agent's batch ``key`` (None: unnamed, summed with the rest) for the leader,
        come on its ``stream`` here (a hub subscriber's id: only batches of one stream merge)."""
        if key is None:
            for summary in summaries:
                self.add(agent_id, summary)
            return
        # one its agent sent before (another replica may have passed it on) is kept apart,
        # and so is what this relay holds of that agent: merged with new ones, the leader
        # would refuse them all with it
        again = key.lowest == key.sequence and any(s.origin_first for s in summaries)
        if again:
            self._batches.close(key)
        if self._batches.holds(key, alone=again):
            return  # sent again by the agent before the leader acknowledged it
        spare = again and self._batches.holds(key)  # (also inside a range held here)
        summaries = [self._checked(agent_id, summary) for summary in summaries]
        # merged while it cannot go up at once (sent on its own, a batch an agent sends
        # again is told apart from the new ones)
        merge = not self.connected or len(self._unacked) >= MAX_IN_FLIGHT
        self._batches.add(key, agent_id, summaries, merge=merge, apart=again, stream=stream, spare=spare)
        self._wake.set()

    def owe_ack(self, stream: AckTarget, sequence: int) -> None:
        """Acknowledge ``stream``'s batch ``sequence`` (just given to :meth:`add_batch`) once
        the leader acknowledged it: a follower that dies before then does not lose it."""
        self.acks.owe(stream, sequence)

    def stream_ended(self, stream: AckTarget) -> None:
        self.acks.forget(stream)

    def add(self, agent_id: str, summary: pb.OutcomeSummary) -> None:
        """One summary of ``agent_id``'s, summed with the rest (no name to de-duplicate by)."""
        summary = self._checked(agent_id, summary)
        self.permits.released(summary.service, summary.released_grants)  # (no Tally sums these)
        self._tallies.setdefault(summary.service, Tally()).merge(summary)
        if summary.failures or summary.probe_failures or summary.rejected:
            self._wake.set()

    def _checked(self, agent_id: str, summary: pb.OutcomeSummary) -> pb.OutcomeSummary:
        # probe results, give-backs and running probes count only under grants relayed to
        # this agent, named to the leader (relay_permits)
        if (
            summary.probe_successes
            or summary.probe_failures
            or summary.probes_released
            or summary.probes_running
            or summary.released_grants
        ):
            return self.permits.checked(agent_id, summary)
        return summary

    def holder_said(self, agent_id: str) -> None:
        """``agent_id``'s first batch on a new stream here was taken: of the permits kept
        out since its stream before broke, those of probes it said still run are its
        again (until their results come), the rest go back to the fleet (see
        :meth:`.RelayedPermits.holder_said`)."""
        if self.permits.holder_said(agent_id):
            self._wake.set()

    @property
    def backlog(self) -> tuple[int, int]:
        """(services asked about, services with waiting agents) kept for the leader."""
        return len(self._asked), len(self._waiting)

    def ask_probe(self, agent_id: str, service: str) -> None:
        if self.permits.holds(agent_id, service):
            return  # it holds one relayed to it: one at a time, like an agent on the leader
        if service not in self._waiting and len(self._waiting) >= MAX_ASKED:
            del self._waiting[next(iter(self._waiting))]
        waiting = self._waiting[service]
        if agent_id not in waiting:
            waiting.append(agent_id)
            if len(waiting) > MAX_WAITING:
                waiting.popleft()
        self._asked.pop(service, None)  # to the end: the newest ask is kept longest
        self._asked[service] = None
        if len(self._asked) > MAX_ASKED:
            del self._asked[next(iter(self._asked))]
        self._wake.set()

    def demand(self, agent_id: str, demand: pb.CapacityDemand) -> None:
        self.leases.demand(agent_id, demand)
        self._wake.set()

    def agent_left(self, agent_id: str) -> None:
        self.leases.agent_left(agent_id)
        # its stream is gone: what it held goes back to the fleet at once, named (a probe
        # it may still run counts again once it says so from its next stream)
        for service, permits in self.permits.agent_left(agent_id).items():
            self._tallies.setdefault(service, Tally()).give_back(self.permits.current(service), permits)
        self._wake.set()
        for waiting in self._waiting.values():
            with contextlib.suppress(ValueError):
                waiting.remove(agent_id)

    # -- the stream ------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.05
        while True:
            leadership = self.leadership
            address = leadership.leader_address if not leadership.leading else None
            if address is None or address == leadership.address:
                # no leader known, or it is this replica's own address (a dead predecessor
                # whose key the campaign removes): relaying would count outcomes twice
                await asyncio.sleep(0.05)
                continue
            try:
                await self._stream(address)
                backoff = 0.05
            except ForeignLeader:
                backoff = 1.0  # logged once; asked again as the leader key or the store changes
            except (grpc.RpcError, OSError) as err:
                _log.info("link to the leader at %s broke (%s)", address, type(err).__name__)
            except Exception:
                _log.exception("link to the leader at %s failed", address)
            finally:
                self.connected = False
                self.marks.link_down()
            with contextlib.suppress(Exception):
                await leadership.refresh_leader()
            changed = await leadership.wait_change(backoff)  # a new leader named: go to it now
            backoff = 0.05 if changed else min(backoff * 2, 1.0)

    async def _stream(self, address: str) -> None:
        if address != self._leader_address:
            # another leader: the permits relayed so far were its predecessor's, which it
            # waits out; their results count for nothing there
            self.permits.forget()
            self._leader_address = address
        # measured anew on each link: the leader at one address may have restarted since,
        # its clock set back by less than it was down (no stamp going back shows that)
        self._offset = ClockOffset()
        self._epoch += 1
        self._resend = True  # anything a previous link did not get acknowledged goes again
        responses = self._connect(address, self._requests(self._epoch, address), self._metadata)
        try:
            async for response in responses:
                if response.HasField("sent_at"):
                    self._offset.sample(response.sent_at.ToNanoseconds() / 1e9, self._clock())
                if response.HasField("snapshot"):
                    # before anything of it is taken (outcomes wait for a snapshot)
                    self.cluster.check(address, response.snapshot.store_cluster)
                    if not self.connected:  # the leader sends a new snapshot after each reload
                        _log.info("relaying to the leader at %s", address)
                    self.connected = True
                    snapshot = response.snapshot
                    self.marks.snapshot(
                        snapshot.breakers, snapshot.partial, snapshot.history, snapshot.read_revision
                    )
                elif response.HasField("breaker"):
                    self.marks.pushed(response.breaker)
                elif response.HasField("outcome_ack"):
                    self._unacked.ack(response.outcome_ack.sequence)
                    self._batches.acked(response.outcome_ack.sequence)
                    self.acks.acked(response.outcome_ack.sequence)
                elif response.HasField("probe_grant"):
                    self._hand_out(response.probe_grant)
                elif response.HasField("lease"):
                    self._share_lease(response.lease)
                if not self._leads(address):
                    return
        finally:
            with contextlib.suppress(Exception):
                await responses.aclose()  # type: ignore[attr-defined]

    def _still_leads(self, address: str) -> bool:
        """Whether the link to ``address`` goes on (checked between flushes)."""
        return self._leads(address)

    def _leads(self, address: str) -> bool:
        """Whether the leader at ``address`` is still the leader, as this replica knows."""
        leadership = self.leadership
        return not leadership.leading and leadership.leader_address == address

    async def _grpc_connect(
        self,
        address: str,
        requests: AsyncIterator[pb.ConnectRequest],
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> AsyncIterator[pb.ConnectResponse]:
        channel = (
            grpc.aio.secure_channel(address, self._credentials, options=KEEPALIVE)
            if self._credentials is not None
            else grpc.aio.insecure_channel(address, options=KEEPALIVE)
        )
        async with channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            call = stub.Connect(requests, metadata=metadata)
            try:
                async for response in call:
                    yield response
            finally:
                call.cancel()

    async def _requests(self, epoch: int, address: str) -> AsyncIterator[pb.ConnectRequest]:
        """What goes up the link to the leader at ``address``: it ends (and the leader ends
        the stream) once a newer link took over, or once ``address`` is no longer the
        leader — known from the leader key, not only from the next answer: a follower taken
        for the leader answers a relay a snapshot and then nothing (it acknowledges batches
        once its own leader does), and two followers relaying to each other would pass
        every batch round between them."""
        keys_sent = self.hub.keys_version
        yield self._hello()
        while True:
            await wait_event(self._wake, self.flush_interval)
            self._wake.clear()
            if epoch != self._epoch or not self._still_leads(address):
                return  # a newer link took over: this one must not take outcomes any more
            if not self.connected:
                continue  # keep outcomes until a leader has answered: a dead link would lose them
            if self.hub.keys_version != keys_sent:  # the leader sees twins on two replicas
                keys_sent = self.hub.keys_version
                yield self._hello()
            if self._resend:
                self._resend = False
                for batch in self._sent_again():
                    yield pb.ConnectRequest(outcomes=batch)
            for request in self._outgoing():
                yield request
            if self.leases.dirty or epoch != self._demand_epoch:
                self._demand_epoch = epoch
                report = self.leases.report()
                if report is not None:
                    yield report
            asked, self._asked = self._asked, {}
            for service in asked:
                yield pb.ConnectRequest(probe_request=pb.ProbeRequest(service=service))

    def _sent_again(self) -> list[pb.OutcomeBatch]:
        """What the link before did not get acknowledged, as first sent, except that each
        agent batch passed on alone is marked as sent again (``origin_first``: its own
        sequence, as an agent marks its own). The replica taking it may have counted it,
        leading then, and follow now: were it merged there with the new batches behind it,
        that replica, leading again, would refuse the range whole and take them along."""
        out = []
        for batch in self._unacked.resend():
            if batch.HasField("origin") and not any(s.origin_first for s in batch.summaries):
                again = pb.OutcomeBatch()
                again.CopyFrom(batch)
                for summary in again.summaries:
                    summary.origin_first = batch.origin.sequence
                batch = again
            out.append(batch)
        return out

    def _hello(self) -> pb.ConnectRequest:
        return pb.ConnectRequest(
            hello=pb.AgentHello(
                agent_id=self.agent_id,
                session_id=self.session_id,
                labels={"relay": "true"},
                outcome_series=self._unacked.series,
                relayed_agents=self.hub.local_keys(),
            )
        )

    def _outgoing(self) -> list[pb.ConnectRequest]:
        """This relay's own sums (if any), then each agent batch (or range), under its origin:
        nothing while ``MAX_IN_FLIGHT`` batches wait for the leader's acknowledgement (what
        comes meanwhile is merged)."""
        room = MAX_IN_FLIGHT - len(self._unacked)
        if room <= 0:
            return []
        self._unacked.dropped += self._batches.dropped - self._dropped  # given up: said upstream
        self._dropped = self._batches.dropped
        tallies, self._tallies = self._tallies, {}
        summaries = self.permits.take_released()  # first: before an agent's word on them
        summaries += [t.to_proto(name) for name, t in tallies.items() if not t.empty()]
        out = [pb.ConnectRequest(outcomes=self._unacked.batch(summaries))] if summaries else []
        for key, _, held in self._batches.take(room - len(out)):
            batch = self._unacked.batch(named(key, held), origin=origin_of(key))
            self._batches.sent(key, batch.sequence)
            out.append(pb.ConnectRequest(outcomes=batch))
        if out:
            self._last_sent = out[-1].outcomes.sequence
        if not len(self._batches):  # every batch owed an ack so far is in one sent
            self.acks.sent(self._last_sent)  # (an ack owed for one sent earlier waits for it too)
        return out

    def _share_lease(self, lease: pb.CapacityLease) -> None:
        """The leader leased this replica a part; split it among the agents here."""
        for agent_id, mine in self.leases.split(lease):
            self.hub.send_to_agent(agent_id, pb.ConnectResponse(lease=mine))

    def drain(self) -> list[Held]:
        """What was gathered for a leader that turned out to be this replica, with what the
        previous leader never acknowledged (else it waits for a link this replica, leading,
        never opens): each agent batch under its name, to count once."""
        held: list[Held] = []
        for batch in self._unacked.resend():
            key = origin_key(batch.origin, batch.summaries) if batch.HasField("origin") else None
            held.append((key, key.agent_id if key else self.agent_id, list(batch.summaries)))
        self._unacked.ack(2**63)
        self._batches.acked(2**63)
        held += self._batches.take()
        self.permits.forget()  # the permits of a leader that is no more
        tallies, self._tallies = self._tallies, {}
        summaries = [t.to_proto(name) for name, t in tallies.items() if not t.empty()]
        if summaries:
            held.append((None, self.agent_id, summaries))
        return held

    def _shift(self) -> float | None:
        """What takes the leader's wall clock to this replica's (None: not measured)."""
        estimate = self._offset.estimate()
        if estimate is None:
            return None
        shift = estimate + self._wall() - self._clock()
        disagree(f"the leader at {self._leader_address}", shift)
        return shift

    def _hand_out(self, grant: pb.ProbeGrant) -> None:
        if not self._grants.first_time(grant.generation, (grant.series, grant.number)):
            return  # delivered twice: handed out (or given back) the first time
        # the generation in force is the last grant's, lower or higher (a leader after a
        # wipe or a failover starts its own): permits of another one no longer stop an ask
        self.permits.granted(grant)
        grant = passed_on(grant, self._wall(), self._probe_timeout(grant.service), self._shift())
        waiting = self._waiting[grant.service]
        if not waiting:
            del self._waiting[grant.service]
        if waiting:  # a mark this replica's agents hold is taken back before the permit
            self.marks.granted(grant.service)
            if self.before_grant is not None:
                self.before_grant(grant.service)
        while waiting:
            agent_id = waiting.popleft()
            if self.hub.send_to_agent(agent_id, pb.ConnectResponse(probe_grant=grant)):
                self.permits.handed(agent_id, grant)
                return
        # nobody here wants it any more: give it back to the fleet (named, when it is)
        if not self.permits.give_back(grant):
            self._tallies.setdefault(grant.service, Tally()).give_back(grant.generation, grant.permits)
        self._wake.set()
