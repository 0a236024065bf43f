"""The simulated fleet: replicas running the real ControlPlane on an in-memory etcd, and
agents holding a real LocalView, connected by in-memory streams.

A :class:`Replica` is one control-plane process: a ``ControlPlane`` with leadership, the real
``ControlPlaneServicer`` serving its streams, and its relay to the leader going through a
:class:`~.net.Link`. Crashing one ends its tasks without a word (no resign, no flush), as
``kill -9`` does. An :class:`Agent` is one agent process: its calls, its outcome batches
(kept until acknowledged and sent again after a break, like ``ControlPlaneConnection``)
and its view of the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState
from mission_control.client.clock_offset import ClockOffset
from mission_control.client.config import policy_from_proto
from mission_control.client.probes import FleetProbe
from mission_control.client.view import LocalView, UnackedBatches
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.serialize_once import SerializeOnce
from mission_control.server.service import ControlPlaneServicer

from .fleet_checks import SHARED
from .memstore import MemStore
from .names import key_name
from .net import Link, LinkBroken, SimAccess

if TYPE_CHECKING:
    from .schedule import World

PREFIX = "/mission-control/v1"
#: Wall-clock seconds at virtual time 0 (records in etcd carry wall times).
EPOCH = 1_800_000_000.0

#: Schedule versions (a seed names a schedule only with its version; ``schedule.py``).
#: 1: the faults of ``schedule._fault``, agents that do not report the lease epoch they hold
#: (as real ones before ``CapacityDemand.held_epoch``: the report moves a leader's epoch and
#: so the schedule); every fixed seed before the epoch record's faults was picked at it.
#: 2: agents report it, and one schedule in three loses the epoch record (``epoch_faults``).
FIRST_SCHEDULES = 1
EPOCH_RECORD_SCHEDULES = 2
SCHEDULE_VERSION = EPOCH_RECORD_SCHEDULES


def probe_secs(draw: float) -> float:
    """How long a probe call runs, from one uniform ``draw``: up to 1.5 s. A scripted
    schedule may make it longer (a slow dependency, within the policy's timeout) to outlast
    a leader's lease and its successor's first HALF_OPEN (``test_scenarios.py``)."""
    return 1.5 * draw


class Replica:
    """One control-plane process at ``name`` (its address), the ``incarnation``-th start."""

    def __init__(self, world: World, name: str, incarnation: int) -> None:
        self.world = world
        self.name = name
        self.instance = f"{name}.{incarnation}"
        self.alive = True
        self._starting: asyncio.Task[None] | None = None
        self.store = MemStore(world.etcd)
        self.store.cut = name in world.cut_from_etcd
        loop = asyncio.get_running_loop()
        self.plane = ControlPlane(
            self.store,
            prefix=PREFIX,
            instance_id=self.instance,
            tick_interval=0.1,
            ping_interval=0.5,
            clock=loop.time,
            wall=world.wall(name),
        )
        #: Stamps ``sent_at`` on this process's clock as a stream takes each response, as
        #: the real server's; None: responses go as objects, unstamped (unskewed schedules).
        self.serializer = SerializeOnce(world.wall(name)) if world.skewed else None
        self.plane.enable_leadership(name, ttl=3, token=world.relay_token, connect=self._relay_connect)
        assert self.plane.relay is not None
        self.plane.breakers.change_listeners.append(lambda breaker, *_: world.probes.changed(self, breaker))
        self.plane.breakers.grant_listeners.append(
            lambda _, grant: world.probes.granting(self, grant.service)
        )
        self.servicer = ControlPlaneServicer(self.plane, SimAccess())
        outcomes = self.servicer._outcomes

        async def receiving(sub, batch):  # type: ignore[no-untyped-def]
            world.receiving = world.batch_name(sub.agent_id, sub.series, batch)
            return await outcomes(sub, batch)

        self.servicer._outcomes = receiving  # type: ignore[method-assign]
        self.links: list[Link] = []
        self.started_at = loop.time()
        record = self.plane.breakers.record

        def counted(agent: str, summary: pb.OutcomeSummary, origin: str = ""):  # type: ignore[no-untyped-def]
            world.counted[summary.service] += summary.failures
            world.counted_by[(self.instance, world.counting)] += summary.failures
            breakers = self.plane.breakers
            with world.trip_counts.counting(self.instance, breakers, summary.service, world.counting):
                return record(agent, summary, origin)

        self.plane.breakers.record = counted  # type: ignore[method-assign]
        world.trip_counts.attach(self.instance, self.plane.breakers)
        count_batch = self.plane.count_batch

        def count_named(key, agent_id, summaries):  # type: ignore[no-untyped-def]
            world.counting = None if key is None else key_name(key)
            try:
                count_batch(key, agent_id, summaries)
            finally:
                world.counting = None

        self.plane.count_batch = count_named  # type: ignore[method-assign]
        self._count_relay()
        bound = self.plane.reports.bound

        def bounded(agent: str, summary: pb.OutcomeSummary, **options):  # type: ignore[no-untyped-def]
            out = bound(agent, summary, **options)
            cut = summary.failures - (out.failures if out is not None else 0)
            world.cut[summary.service] += cut
            world.cut_keys.add(world.receiving) if cut else None
            return out

        self.plane.reports.bound = bounded  # type: ignore[method-assign]

    async def start(self) -> None:
        self._starting = asyncio.current_task()
        await self.plane.start(load_timeout=5.0)

    def crash(self) -> None:
        """``kill -9``: every task ends where it is (its start too, when it is still
        loading: it would start the rest later); streams break; memory is gone."""
        self.alive = False
        if self._starting is not None:
            self._starting.cancel()
        for task in self.plane._tasks:
            task.cancel()
        for link in list(self.links):
            link.break_(reason="replica crashed", drop_all=True)

    def serve(self, client: str, requests: AsyncIterator[pb.ConnectRequest], metadata, sender: str) -> Link:  # type: ignore[no-untyped-def]
        link = Link(
            self.world.rng,
            self.servicer,
            client,
            requests,
            metadata,
            on_delivered=lambda r: self.world.delivered_request(sender, r),
            serializer=self.serializer,
        )
        self.links.append(link)
        return link

    async def _relay_connect(self, address, requests, metadata):  # type: ignore[no-untyped-def]
        target = self.world.reachable(self.name, address)
        if target is None or not self.alive:
            raise LinkBroken(f"{address} unreachable")
        relay = self.plane.relay
        assert relay is not None
        link = target.serve(f"relay:{self.instance}", requests, metadata, sender=f"relay:{self.instance}")
        self.links.append(link)
        try:
            async for response in link.responses():
                yield response
        finally:
            link.break_()

    def _count_relay(self) -> None:
        relay = self.plane.relay
        assert relay is not None
        add_batch, add, drain = relay.add_batch, relay.add, relay.drain
        sender = f"relay:{self.instance}"
        world = self.world

        def taken_batch(key, agent_id, summaries, stream=0):  # type: ignore[no-untyped-def]
            if key is None:
                return add_batch(key, agent_id, summaries, stream)
            if not relay._batches.holds(key):  # (one sent again before it was passed on is
                # kept as first given: the report gate may have cut that one otherwise)
                world.taken_keys[sender][key_name(key)] = sum(s.failures for s in summaries)
            return add_batch(key, agent_id, summaries, stream)

        def taken(agent_id: str, summary: pb.OutcomeSummary) -> None:
            world.taken_loose[sender] += summary.failures
            add(agent_id, summary)

        def drained():  # type: ignore[no-untyped-def]
            held = drain()
            for key, _, summaries in held:
                failures = sum(s.failures for s in summaries)
                if key is None:
                    world.drained_loose[sender] += failures
                else:
                    world.drained_keys[sender][key_name(key)] = failures
            return held

        relay.add_batch = taken_batch  # type: ignore[method-assign]
        relay.add = taken  # type: ignore[method-assign]
        relay.drain = drained  # type: ignore[method-assign]


class Agent:
    """One agent process: calls ``services``, reports outcomes, keeps a fleet view."""

    def __init__(self, world: World, name: str, services: tuple[str, ...]) -> None:
        self.world = world
        self.name = name
        self.services = services
        loop = asyncio.get_running_loop()
        self.view = LocalView(clock=loop.time, wall=world.wall(name))
        #: Each replica's clock as measured from its messages (``sent_at``), by address.
        self.offsets: dict[str, ClockOffset] = {}
        self.unacked = UnackedBatches(series=name)
        self.alive = True
        self.link: Link | None = None
        self.replica: Replica | None = None
        self.connected_since = float("inf")
        self.generated: Counter[str] = Counter()
        self.rejected = 0
        self._epoch = 0
        self._wake = asyncio.Event()
        self._probe_asks: list[str] = []
        #: Calls a second this agent wants to make under the fleet-shared limit.
        self.spend_rate = world.rng.choice((4.0, 10.0, 25.0))
        #: I1 (fail static): the fleet OPENs held when the link last dropped.
        self.held_at_drop: dict[str, tuple[BreakerState, float]] = {}
        self.tasks = [
            asyncio.create_task(self._run()),
            asyncio.create_task(self._calls()),
            asyncio.create_task(self._spending()),
        ]

    @property
    def epoch(self) -> int:
        """Which stream this is (each new stream to a replica counts one more)."""
        return self._epoch

    # -- the link ------------------------------------------------------------------

    async def _run(self) -> None:
        rng = self.world.rng
        backoff = 0.05
        while self.alive:
            replica = self.world.pick_replica(self.name)
            if replica is not None:
                try:
                    await self._stream(replica)
                except LinkBroken:
                    pass
                finally:
                    self._dropped()
            await asyncio.sleep(backoff * (0.5 + rng.random()))
            backoff = min(backoff * 2, 2.0)
            if replica is not None and self.world.now - self._stream_started > 5.0:
                backoff = 0.05

    _stream_started = 0.0
    _resend = False

    async def _stream(self, replica: Replica) -> None:
        self._epoch += 1
        self._resend = True
        self._stream_started = self.world.now
        link = replica.serve(f"agent:{self.name}", self._requests(self._epoch), None, sender=self.name)
        self.link, self.replica = link, replica
        async for response in link.responses():
            if response.HasField("sent_at"):  # (as ``ControlPlaneConnection._sampled``)
                offset = self.offsets.setdefault(replica.name, ClockOffset())
                offset.sample(response.sent_at.ToNanoseconds() / 1e9, self.view.clock())
            self._apply(response)

    def _dropped(self) -> None:
        if self.link is not None:
            self.link.break_()
        self.link = self.replica = None
        self.connected_since = float("inf")
        self.view.forget_fleet()
        now = self.world.now
        self.held_at_drop = {
            name: (state.fleet.state, state.fleet.open_until)
            for name, state in self.view.services.items()
            if state.fleet is not None
            and state.fleet.state is BreakerState.OPEN
            and state.fleet.open_until > now
        }

    def break_link(self) -> None:
        if self.link is not None:
            self.link.break_(reason="network")

    async def _requests(self, epoch: int) -> AsyncIterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(
            hello=pb.AgentHello(
                agent_id=self.name,
                session_id=self.name,
                services=(*self.services, SHARED),
                outcome_series=self.name,
            )
        )
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.05)
            self._wake.clear()
            if epoch != self._epoch or not self.alive:
                return
            if not self.view.connected:
                continue
            if self._resend:  # what an earlier stream did not get acknowledged, as it was
                self._resend = False
                again = self.unacked.resend(marked=True)
                said = self.view.running_said()  # first, as ``ControlPlaneConnection``
                if said or self.view.probing():
                    yield pb.ConnectRequest(outcomes=self.unacked.batch(said, ahead=True))
                for batch in again:
                    yield pb.ConnectRequest(outcomes=batch)
            summaries = []
            for name, state in list(self.view.services.items()):
                tally = state.drain()
                if tally is not None:
                    summaries.append(tally.to_proto(name))
            if summaries:
                batch = self.unacked.batch(summaries)
                self.world.batch_sent(self.name, batch)
                yield pb.ConnectRequest(outcomes=batch)
            demand = self._demand(epoch)
            if demand is not None:
                yield demand
            asks, self._probe_asks = self._probe_asks, []
            for service in asks:
                # not one queued before the stream broke while a probe of that stream runs
                # (as ``ControlPlaneConnection._stale_ask``)
                if not self.view.get(service).probes.any_before(self.view.stream):
                    yield pb.ConnectRequest(probe_request=pb.ProbeRequest(service=service))

    def _apply(self, response: pb.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        view = self.view
        if kind == "snapshot":
            snapshot = response.snapshot
            policies = {m.service: policy_from_proto(m) for m in snapshot.policies}
            view.apply_snapshot(policies, snapshot.breakers, partial=snapshot.partial)
            view.connected = True
            self.connected_since = self.world.now
            self.held_at_drop = {}
        elif kind == "breaker":
            view.set_breaker(response.breaker)
        elif kind == "policy":
            update = response.policy
            view.set_policy(update.service, None if update.deleted else policy_from_proto(update.policy))
        elif kind == "probe_grant":
            grant = response.probe_grant
            self.world.probes.granted(self, grant.service, grant.generation)
            offset = self.offsets.get(self.replica.name) if self.replica is not None else None
            view.grant(grant, offset.estimate() if offset is not None else None)
        elif kind == "outcome_ack":
            self.unacked.ack(response.outcome_ack.sequence)
        elif kind == "lease":
            self.world.admissions.leased(self, response.lease)
            view.apply_lease(response.lease)

    def _demand(self, epoch: int) -> pb.ConnectRequest | None:
        """What the agent asked of each fleet-shared limit, as ``ControlPlaneConnection``
        reports it (a new stream first says which limits it shares)."""
        demands = []
        for name, state in list(self.view.services.items()):
            for resource, budget in state.leased.items():
                budget.tick(self.world.now)
                reports = budget.drain_reports()
                if reports or budget.announced != epoch:
                    demand = pb.CapacityDemand(
                        service=name,
                        resource=resource,
                        agents_known=budget.agents,
                        safe_units=budget.claim(self.world.now),
                        agents=1,
                        held_epoch=budget.epoch if self.world.version >= EPOCH_RECORD_SCHEDULES else 0,
                    )
                    if reports:
                        last = reports[-1]
                        demand.period, demand.wanted, demand.used = last.period, last.wanted, last.used
                        demand.leased = last.leased
                    demands.append(demand)
                budget.announced = epoch
        return pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=demands)) if demands else None

    def spend(self, service: str) -> bool:
        """One call's unit of every fleet-shared limit of ``service``: whether it was admitted."""
        state = self.view.get(service)
        now = self.world.now
        taken = []
        for budget in state.leased.values():
            if budget.take(1.0, now) > 0:
                for back in taken:
                    back.give_back(1.0)
                return False
            taken.append(budget)
        return True

    # -- calls -----------------------------------------------------------------------

    async def _calls(self) -> None:
        rng: random.Random = self.world.rng
        while self.alive:
            await asyncio.sleep(rng.expovariate(10.0))
            if not self.world.calling:
                continue
            self.call(rng.choice(self.services), rng)

    def call(self, service: str, rng: random.Random) -> None:
        now = self.world.now
        state = self.view.get(service)
        fleet = self.view.fleet_in_force(state, now)
        failing = rng.random() < self.world.failure_rate(service)
        with state.lock:
            tally = state.tally
            if fleet is not None and fleet.state is BreakerState.HALF_OPEN:
                permit, back = state.permits.take(fleet.generation, now)
                state.return_permits(back)
                if permit is None:
                    tally.rejected += 1
                    self.world.probes.refused(self, service, fleet.generation)
                    # (not while a probe under a permit of the stream before runs, as
                    # ``Admission.ask_probe``)
                    if now - state.probe_asked_at >= 0.1 and not state.probes.any_before(self.view.stream):
                        state.probe_asked_at = now
                        self._probe_asks.append(service)
                        self._wake.set()
                    return
                probe = FleetProbe(fleet.generation, permit.number, self.view.stream, permit.hold_end)
                state.probes.started(probe)
                self._probe(service, probe, failing, rng)
                return
            if fleet is not None and fleet.state.rejects:
                tally.rejected += 1
                self.rejected += 1
                return
            if failing:
                tally.failures += 1
                tally.trailing_failures += 1
                self.generated[service] += 1
            else:
                tally.successes += 1
                tally.trailing_failures = 0
        if failing:
            self._wake.set()

    def _probe(self, service: str, probe: FleetProbe, failing: bool, rng: random.Random) -> None:
        """A probe call under a permit: it runs a while, then its outcome is counted (for
        its HALF_OPEN and grant, as ``ServiceState.probe_ended``)."""
        probe_id = self.world.probes.started(self, service, probe.generation)
        secs = probe_secs(rng.random())
        if self.world.skewed:  # cut at the policy's timeout or its permit's hold, as the
            # executor's deadline cuts it: a timeout
            ends_by = min(self.view.get(service).policy.timeout_secs, probe.hold_end - self.world.now)
            if ends_by < secs:
                secs, failing = max(0.0, ends_by), True

        def done() -> None:
            self.world.probes.ended(probe_id)
            if not self.alive:
                return
            state = self.view.get(service)
            with state.lock:
                state.probe_ended(probe, failing)
            self._wake.set()

        asyncio.get_running_loop().call_later(secs, done)

    async def _spending(self) -> None:
        """Calls under the fleet-shared limit: each admitted one is recorded for I4."""
        rng: random.Random = self.world.rng
        while self.alive:
            await asyncio.sleep(rng.expovariate(self.spend_rate))
            if not self.world.calling:
                continue
            if not self.view.get(SHARED).leased:  # no fleet limit known here: not under it
                self.world.admissions.unlimited += 1
            elif self.spend(SHARED):
                self.world.admissions.admitted(self)

    def die(self) -> None:
        """The process is gone: what it had not delivered is lost with it."""
        self.alive = False
        for task in self.tasks:
            task.cancel()
        if self.link is not None:
            self.link.break_(reason="agent died", drop_all=True)
