"""The ``ControlPlaneService`` gRPC servicer (asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
from mission_control.client.breaker import BreakerState
from mission_control.client.config import (
    config_from_proto,
    policy_from_proto,
    policy_to_json,
    policy_to_proto,
)
from mission_control.client.errors import ConfigurationError, StorageFailure
from mission_control.client.policy import breaker_name_problem, name_problem
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import errors_pb2

from . import history
from .audit import Author
from .auth import REPLICA_PREFIX, AccessPolicy
from .control_plane import ControlPlane, check_policies_fit, check_reason
from .hub import Subscriber
from .inbound import agent_key, bounded_demand, hello_problem, peer_host
from .late_results import probe_parts
from .listing import breakers_in_turns
from .not_read import NOT_READ
from .outcome_ledger import BatchKey, batch_key
from .probe_results import identified, known_gone, known_results
from .reports import may_report
from .shadow_ops import clear_candidate, promote_candidate, put_candidate
from .snapshot_build import PendingSnapshot
from .stats import Page
from .store import StoreUnavailable, Write

_log = logging.getLogger("mission_control.server.service")

_T = TypeVar("_T")

_SETTABLE = {
    pb.BREAKER_STATE_CLOSED: BreakerState.CLOSED,
    pb.BREAKER_STATE_FORCED_OPEN: BreakerState.FORCED_OPEN,
    pb.BREAKER_STATE_FORCED_CLOSED: BreakerState.FORCED_CLOSED,
    pb.BREAKER_STATE_DISABLED: BreakerState.DISABLED,
}


def _check_name(field: str, name: str) -> None:
    problem = breaker_name_problem(name) if field in ("name", "names") else name_problem(name)
    if problem:
        raise ConfigurationError(field, problem)


#: Summaries handled between two yields to the event loop.
SUMMARIES_PER_STEP = 16
#: Agent ids held by more than one process, listed in stats (all are counted).
MAX_SHARED_SHOWN = 32

#: A third of etcd's default --max-txn-ops (128), less the import's bundle record: an
#: import is one transaction, all or nothing, and each policy it writes carries its audit
#: record and its mark in that transaction.
MAX_IMPORT_WRITES = 42


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may ask of the control plane."""

    max_agents: int = 10_000
    max_streams_per_agent: int = 8
    max_summaries_per_batch: int = 1024
    #: Summaries one agent may send per second (bursts of two seconds' worth, at least a
    #: full batch); the rest are refused unread.
    max_summaries_per_sec: float = 1024.0
    max_reason_length: int = 512
    #: Distinct agent ids connected from one address when agents are not authenticated.
    max_agents_per_peer: int = 64
    #: Breakers of services no policy names: in all, and admitted by one agent.
    max_unnamed_services: int = 1024
    max_unnamed_services_per_agent: int = 64
    #: WatchBreakers: names in one filter, calls in all and from one address.
    max_watch_names: int = 1024
    max_watchers: int = 1024
    max_watchers_per_peer: int = 16


class ControlPlaneServicer(pb_grpc.ControlPlaneServiceServicer):
    def __init__(
        self, plane: ControlPlane, access: AccessPolicy | None = None, limits: Limits | None = None
    ) -> None:
        self.plane = plane
        self.access = access or AccessPolicy()
        self.limits = limits or Limits()
        #: Outcome batches being taken (held: a task only weakly referenced may vanish).
        self._taking: set[asyncio.Future[bool]] = set()

    # -- agents ----------------------------------------------------------------

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ConnectResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("message") != "hello":
            raise ConfigurationError("hello", "a Connect stream must start with AgentHello")
        hello = first.hello
        problem = hello_problem(hello)
        if problem is not None:
            raise ConfigurationError(*problem)
        await self.access.authorize_agent(context, hello.agent_id)
        plane = self.plane
        peer = peer_host(context.peer() or "")
        replica = await self._check_replica(context, hello.agent_id, peer)
        key = hello.agent_id if replica else agent_key(hello, plane.hub.sessions_of(hello.agent_id))
        await self._check_peer(context, key, peer)
        # An agent id's streams are bounded whichever processes hold them (a token names an
        # agent id, not a process).
        streams = plane.hub.streams_named(hello.agent_id)
        if streams >= self.limits.max_streams_per_agent:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"agent {hello.agent_id!r} already has {streams} streams "
                f"(limit {self.limits.max_streams_per_agent})",
            )
        if not plane.hub.streams_of(key) and plane.hub.connected_agents >= self.limits.max_agents:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.limits.max_agents} agents connected: the limit"
            )
        sub = plane.hub.connect(hello, peer, key)
        sub.trusted = replica or self.access.is_admin(context)
        sub.replica = replica
        if replica:
            plane.hub.relayed_by(sub, list(hello.relayed_agents))
        elif hello.held_generations:
            plane.held_newer.claimed(key, dict(hello.held_generations))
        plane.agent_joined(sub.agent_id, sub.name, relay_session=hello.session_id if replica else "")
        _log.info("agent %s connected (stream %s)", key, sub.id)
        reader = asyncio.create_task(self._read(sub, request_iterator))
        try:
            # built a slice at a time: what is pushed meanwhile is queued behind it
            sub.queue.widen(plane.breakers.count() + plane.snapshot_slice)
            yield pb.ConnectResponse(snapshot=await plane.snapshot_in_slices(sub.services))
            while True:
                message = await sub.next()
                if isinstance(message, PendingSnapshot):  # one for every stream, being built
                    sub.queue.widen(plane.breakers.count() + plane.snapshot_slice)
                    message = await message.message()
                if message is None:
                    break
                yield message  # type: ignore[misc]
            if sub.overflowed:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream fell behind; reconnect")
            if sub.refusal is not None:
                await context.abort(*sub.refusal)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            plane.stream_ended(sub)
            if plane.hub.disconnect(sub):
                plane.agent_left(sub.agent_id, relay=sub.replica, name=sub.name)
            _log.info("agent %s disconnected (stream %s)", sub.agent_id, sub.id)

    async def _check_replica(self, context: grpc.aio.ServicerContext, agent_id: str, peer: str) -> bool:
        """Whether the stream is a replica's relay; an id of the relays' form is refused
        to anyone else."""
        access = self.access
        if access.is_replica(context) or access.is_loopback_replica(agent_id, peer):
            return True
        if agent_id.startswith(REPLICA_PREFIX):
            if access.is_admin(context):
                return True  # relays holding an admin token (the shared-token deployment)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"agent ids starting with {REPLICA_PREFIX!r} are for replicas",
            )
        return False

    async def _check_peer(self, context: grpc.aio.ServicerContext, agent_id: str, peer: str) -> None:
        # Without authentication anyone may invent agent ids: bound those one address holds,
        # so that a single client cannot fill max_agents. Authenticated ids are known ones.
        if self.access.agent_tokens or self.access.certificate_identities(context):
            return
        hub = self.plane.hub
        held = hub.agents_from(peer)
        if held >= self.limits.max_agents_per_peer and not hub.has_agent_from(peer, agent_id):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{held} agents connected from this address (limit {self.limits.max_agents_per_peer})",
            )

    async def _read(self, sub: Subscriber, requests: AsyncIterator[pb.ConnectRequest]) -> None:
        plane = self.plane
        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if (
                    kind == "outcomes"
                    and len(request.outcomes.summaries) > self.limits.max_summaries_per_batch
                ):
                    sub.refuse(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"a batch carries at most {self.limits.max_summaries_per_batch} summaries",
                    )
                    return
                if kind == "outcomes":
                    whole = await self._outcomes(sub, request.outcomes)
                    if not sub.said and not sub.replica:
                        sub.said = True
                        if whole:  # (a batch cut by the report budget may not say all)
                            plane.holder_said(sub.agent_id)
                elif kind == "probe_request":
                    service = request.probe_request.service
                    if breaker_name_problem(service):
                        continue
                    if not sub.trusted and not may_report(plane.policies.policy_of(service), sub.agent_id):
                        plane.reports.refuse(sub.agent_id, service, "asked for a probe: not a reporter")
                        continue
                    if plane.admission.known(service):
                        plane.request_probe(sub.agent_id, service, relay=sub.replica)
                    else:  # never admitted here: it is CLOSED, and asking creates nothing
                        plane.answer_probe(sub.agent_id, service)
                elif kind == "demand":
                    for demand in request.demand.demands[: self.limits.max_summaries_per_batch]:
                        bounded = bounded_demand(demand, replica=sub.trusted)
                        if bounded is not None:
                            plane.record_demand(sub.agent_id, bounded)
                elif kind == "hello":
                    problem = hello_problem(request.hello)
                    if problem is not None:
                        sub.refuse(grpc.StatusCode.INVALID_ARGUMENT, f"{problem[0]}: {problem[1]}")
                        return
                    sub.services = tuple(request.hello.services)
                    if sub.replica:
                        plane.hub.relayed_by(sub, list(request.hello.relayed_agents))
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        except Exception:  # a bug here must not end streams silently
            _log.exception("reading the stream of agent %s failed; ending it", sub.agent_id)
            raise
        finally:
            sub.close()

    async def _outcomes(self, sub: Subscriber, batch: pb.OutcomeBatch) -> bool:
        """Take an agent's batch; returns whether all of its summaries were admitted."""
        plane = self.plane
        dropped = batch.dropped if sub.trusted else plane.reports.dropped(sub.agent_id, batch.dropped)
        plane.stats.add_dropped(dropped)
        telemetry = plane.telemetry
        if telemetry is not None and dropped:
            telemetry.dropped(dropped)
        summaries = batch.summaries
        admitted = len(summaries) if sub.trusted else plane.reports.admit(sub.agent_id, len(summaries))
        refused = len(summaries) - admitted
        if refused:
            plane.reports.refuse(sub.agent_id, "*", "sent more summaries than its budget", refused)
        key = batch_key(sub.agent_id, sub.session_id, sub.series, batch, replica=sub.replica)
        fresh = key is None or plane.first_time(key)
        relayed = False
        if fresh or plane.passes_on:
            # The ledger says counted from here on: the batch is taken in full even when the
            # stream is cancelled half way (its resend is not counted again).
            reporter = _reporter(sub, batch)
            taking = asyncio.ensure_future(
                self._take(sub, key, summaries[:admitted], shown=fresh, reporter=reporter)
            )
            self._taking.add(taking)
            taking.add_done_callback(self._taken)
            relayed = await asyncio.shield(taking)
        elif sub.replica:
            # counted already (the agent's own copy came first): a probe result in it still
            # settles a permit held for this relay, once (late_results)
            self._take_late(sub, key, summaries[:admitted], _reporter(sub, batch))
        if batch.sequence:
            plane.acknowledge(sub, batch.sequence, relayed=relayed)
        if refused:
            # Read nothing more from this stream until the budget has refilled: flow control
            # then holds the client's next batches, which are never parsed.
            await asyncio.sleep(plane.reports.refill_secs(refused))
        return not refused

    async def _take(
        self,
        sub: Subscriber,
        key: BatchKey | None,
        summaries: Sequence[pb.OutcomeSummary],
        shown: bool,
        reporter: str,
    ) -> bool:
        """Take a batch: bound it, show it in this replica's figures (unless ``shown`` is
        False: a follower passing on a batch it already showed), count it or pass it on
        (True). ``reporter``: the agent whose outcomes these are (behind a relay, its origin)."""
        taken = []
        for i, summary in enumerate(summaries):
            if i and not i % SUMMARIES_PER_STEP:
                await asyncio.sleep(0)  # a big batch must not keep the loop from others
            bounded = self._summary(sub, summary, shown, reporter)
            if bounded is not None:
                taken.append(bounded)
        return self.plane.record_batch(key, sub.agent_id, taken, sub.id)

    def _take_late(
        self, sub: Subscriber, key: BatchKey | None, summaries: Sequence[pb.OutcomeSummary], reporter: str
    ) -> None:
        """Count the probe part of a relay's batch counted already (see :mod:`.late_results`)."""
        taken = []
        for part in probe_parts(summaries):
            bounded = self._summary(sub, part, shown=False, reporter=reporter)
            if bounded is not None:
                taken.append(bounded)
        if taken:
            self.plane.count_batch(key, sub.agent_id, taken)

    def _taken(self, taking: asyncio.Future[bool]) -> None:
        self._taking.discard(taking)
        if not taking.cancelled() and taking.exception() is not None:
            _log.error("taking an outcome batch failed", exc_info=taking.exception())

    def _summary(
        self, sub: Subscriber, summary: pb.OutcomeSummary, shown: bool = True, reporter: str = ""
    ) -> pb.OutcomeSummary | None:
        """``summary`` as bounded by the report gate, recorded in stats when ``shown``
        (None: refused). Places for breakers go to the ``reporter`` (the sender when empty)."""
        plane = self.plane
        if breaker_name_problem(summary.service):
            return None
        if not plane.admission.allows(reporter or sub.agent_id, summary.service, trusted=sub.trusted):
            why = (
                "past the policy's max_endpoints"
                if plane.admission.endpoint_policy(summary.service) is not None
                else "too many services without a policy"
            )
            plane.reports.refuse(sub.agent_id, summary.service, why)
            return None
        held = (
            self._probes_held(sub, summary, reporter)
            if summary.probe_successes or summary.probe_failures or summary.probes_released
            else 0
        )
        bounded = plane.reports.bound(sub.agent_id, summary, trusted=sub.trusted, probes_held=held)
        if bounded is None:
            return None
        if not shown:
            return bounded
        named = plane.policies.stored(bounded.service) is not None
        plane.stats.record(sub.name, bounded, named=named)
        for listener in plane.outcome_listeners:
            listener(sub.name, bounded)
        if plane.telemetry is not None:
            plane.telemetry.outcomes(sub.name, bounded)
        return bounded

    def _probes_held(self, sub: Subscriber, summary: pb.OutcomeSummary, reporter: str = "") -> int:
        # The replica that decides knows the permits it granted (to an agent, or to a
        # follower's relay). A follower knows those it relayed to the agent (relay_permits).
        # Results of a HALF_OPEN that is over (another generation) are of the permits it
        # left running (see CircuitBreaker.earlier_of): a legitimate late report, not a claim.
        plane = self.plane
        if plane.leading or plane.relay is None:
            breaker = plane.breakers.find(summary.service)
            if breaker is None:
                return 0
            if summary.probe_generation in (0, breaker.generation):
                held = breaker.permits_of(sub.agent_id)
            else:
                held = breaker.earlier_of(sub.agent_id)
            # results named by grant: those of probes it began before a reconnect too (they
            # count for nothing, but settle what is kept of their permits), and behind a
            # relay those of its agent's own grants from before it moved there
            if not identified(summary):
                return held
            known = known_results(breaker, sub.agent_id, summary)
            if reporter and reporter != sub.agent_id:
                known += known_results(breaker, reporter, summary)
            known += known_gone(breaker, plane.breakers.relays_gone, summary)
            return max(held, known)
        return max(1, plane.relay.permits.count(sub.agent_id, summary.service))

    # -- breakers --------------------------------------------------------------

    async def ListBreakers(self, request, context):  # type: ignore[no-untyped-def]
        complete = self.plane.view_complete
        listed = await breakers_in_turns(self.plane.breakers)  # (the loop turns meanwhile)
        complete = complete and self.plane.view_complete
        return pb.ListBreakersResponse(breakers=listed, incomplete=not complete)

    async def GetBreaker(self, request, context):  # type: ignore[no-untyped-def]
        _check_name("name", request.name)
        if self.plane.breakers.find(request.name) is None:
            if not self.plane.view_complete:
                await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READ.format(what="this breaker"))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no breaker named {request.name!r}")
        return pb.GetBreakerResponse(breaker=self.plane.breakers.to_proto(request.name))

    async def WatchBreakers(self, request, context):  # type: ignore[no-untyped-def]
        if len(request.names) > self.limits.max_watch_names:
            raise ConfigurationError("names", f"at most {self.limits.max_watch_names} names")
        names = frozenset(request.names)
        for name in names:
            _check_name("names", name)
        await self._check_watchers(context, peer_host(context.peer() or ""))
        sub = self.plane.hub.watch(names, peer_host(context.peer() or ""))
        try:
            for breaker in self.plane.breakers.snapshot():
                if not names or breaker.name in names:
                    yield pb.WatchBreakersResponse(breaker=breaker)
            while True:
                message = await sub.next()
                if message is None:
                    break
                yield message
        finally:
            self.plane.hub.unwatch(sub)

    async def _check_watchers(self, context: grpc.aio.ServicerContext, peer: str) -> None:
        hub, limits = self.plane.hub, self.limits
        if len(hub.watchers) >= limits.max_watchers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{limits.max_watchers} watchers: the limit"
            )
        if hub.watchers_from(peer) >= limits.max_watchers_per_peer:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{limits.max_watchers_per_peer} watchers from this address: the limit",
            )

    async def SetBreakerState(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "SetBreakerState")
        violations = []
        problem = breaker_name_problem(request.name)
        if problem:
            violations.append(("name", problem))
        state = _SETTABLE.get(request.state)
        if state is None:
            violations.append(("state", "must be CLOSED (reset), FORCED_OPEN, FORCED_CLOSED or DISABLED"))
        if len(request.reason) > self.limits.max_reason_length:
            violations.append(("reason", f"must be at most {self.limits.max_reason_length} characters"))
        elif state not in (None, BreakerState.CLOSED) and not request.reason.strip():
            violations.append(("reason", "is required to force or disable a breaker: say why"))
        if violations:
            raise ConfigurationError.from_violations(violations)
        assert state is not None
        unknown = self.plane.unknown_breaker(request.name, request.create)
        if unknown:
            await context.abort(grpc.StatusCode.NOT_FOUND, unknown)
        author = Author(identity, request.reason)
        breaker = await self.plane.set_breaker_state(request.name, state, request.reason, author)
        return pb.SetBreakerStateResponse(breaker=breaker)

    # -- policies --------------------------------------------------------------

    async def ListPolicies(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ListPoliciesResponse(
            policies=[policy_to_proto(p) for p in self.plane.policies.all()],
            incomplete=not self.plane.view_complete,
        )

    async def GetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        _check_name("service", request.service)
        response = pb.GetPolicyResponse(
            effective=policy_to_proto(self.plane.policies.policy_of(request.service)),
            incomplete=not self.plane.view_complete,
        )
        stored = self.plane.policies.stored(request.service)
        if stored is not None:
            response.policy.CopyFrom(policy_to_proto(stored[0]))
            response.revision = stored[1]  # the value in force (a newer refused one: stats)
        return response

    async def PutPolicy(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "PutPolicy")
        self._check_reason(request.reason)
        if not request.HasField("policy"):
            raise ConfigurationError("policy", "is required")
        policy = policy_from_proto(request.policy)
        others = [p for p in self.plane.policies.all() if p.service != policy.service]
        check_policies_fit([*others, policy])
        author = Author(identity, request.reason)
        revision = await self.plane.put_policy(policy, request.expected_revision, author)
        if revision is None:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"policy {policy.service!r} changed since revision {request.expected_revision}",
            )
        return pb.PutPolicyResponse(policy=policy_to_proto(policy), revision=revision)

    async def DeletePolicy(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "DeletePolicy")
        self._check_reason(request.reason)
        _check_name("service", request.service)
        deleted = await self.plane.delete_policy(request.service, Author(identity, request.reason))
        return pb.DeletePolicyResponse(deleted=deleted)

    async def ValidateConfig(self, request, context):  # type: ignore[no-untyped-def]
        try:
            config_from_proto(request.config)
        except ConfigurationError as err:
            return pb.ValidateConfigResponse(
                valid=False,
                violations=[errors_pb2.FieldViolation(field=f, message=m) for f, m in err.violations],
            )
        return pb.ValidateConfigResponse(valid=True)

    async def ImportConfig(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "ImportConfig")
        self._check_reason(request.reason)
        config = config_from_proto(request.config)
        plane = self.plane
        changes: list[pb.PolicyChange] = []
        writes: list[Write] = []
        # Compared with what etcd holds: a refused value there (an `etcdctl put` that did
        # not validate) is replaced, also by the policy still in force, at its revision.
        for name, policy in sorted(config.service_specific.items()):
            stored = plane.policies.stored(name)
            change = pb.PolicyChange(service=name, after=policy_to_proto(policy))
            if stored is None:
                change.action = "added"
            else:
                change.before.CopyFrom(policy_to_proto(stored[0]))
                same = stored[0] == policy and not plane.policies.refused_at(name)
                change.action = "unchanged" if same else "changed"
            changes.append(change)
            if change.action != "unchanged":
                expected = plane.policies.revision_of(name)
                writes.append(Write(plane.policies.key(name), policy_to_json(policy).encode(), expected))
        if request.prune:
            for policy in plane.policies.all():
                if policy.service not in config.service_specific:
                    changes.append(
                        pb.PolicyChange(
                            service=policy.service, action="removed", before=policy_to_proto(policy)
                        )
                    )
                    expected = plane.policies.revision_of(policy.service)
                    writes.append(Write(plane.policies.key(policy.service), None, expected))
        kept = (
            []
            if request.prune
            else [p for p in plane.policies.all() if p.service not in config.service_specific]
        )
        check_policies_fit([*kept, *config.service_specific.values()])
        if len(writes) > MAX_IMPORT_WRITES:
            raise ConfigurationError(
                "service_specific",
                f"an import may change at most {MAX_IMPORT_WRITES} policies (one etcd transaction); "
                f"this one changes {len(writes)}: import it in parts",
            )
        if request.dry_run or not writes:
            return pb.ImportConfigResponse(changes=changes)
        result = await plane.writer.write_policies(writes, Author(identity, request.reason))
        if not result.ok:
            await context.abort(
                grpc.StatusCode.ABORTED,
                "policies changed while importing; nothing was written, try again",
            )
        return pb.ImportConfigResponse(changes=changes, revision=result.revision)

    # -- shadow mode -----------------------------------------------------------

    async def PutShadowPolicy(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "PutShadowPolicy")
        if not request.HasField("policy"):
            raise ConfigurationError("policy", "is required")
        self._check_reason(request.reason)
        policy = policy_from_proto(request.policy)
        revision = await put_candidate(self.plane, policy, Author(identity, request.reason))
        return pb.PutShadowPolicyResponse(policy=policy_to_proto(policy), revision=revision)

    async def ListShadowPolicies(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ListShadowPoliciesResponse(policies=[policy_to_proto(p) for p in self.plane.shadows.all()])

    async def DeleteShadowPolicy(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "DeleteShadowPolicy")
        _check_name("service", request.service)
        self._check_reason(request.reason)
        author = Author(identity, request.reason)
        return pb.DeleteShadowPolicyResponse(
            deleted=await clear_candidate(self.plane, request.service, author)
        )

    async def PromoteShadowPolicy(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "PromoteShadowPolicy")
        _check_name("service", request.service)
        self._check_reason(request.reason)
        if not request.reason.strip():
            raise ConfigurationError("reason", "is required to promote a candidate: say why")
        author = Author(identity, request.reason)
        held = self.plane.shadows.stored(request.service)
        if request.candidate_revision and held is not None and held[1] != request.candidate_revision:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"the candidate of {request.service!r} was replaced at revision {held[1]} (not the one "
                f"at {request.candidate_revision}): review it; nothing was promoted",
            )
        promoted = await promote_candidate(self.plane, request.service, request.expected_revision, author)
        if promoted is None:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"policy {request.service!r} changed since revision {request.expected_revision or 'read'}"
                " (or was created meanwhile); nothing was promoted",
            )
        policy, revision = promoted  # type: ignore[misc]
        return pb.PromoteShadowPolicyResponse(policy=policy_to_proto(policy), revision=revision)

    # -- audit, history, rollback ----------------------------------------------

    async def ListAuditRecords(self, request, context):  # type: ignore[no-untyped-def]
        return await self._stored(context, history.list_records(self.plane, request))

    async def ListPolicyHistory(self, request, context):  # type: ignore[no-untyped-def]
        _check_name("service", request.service)
        versions, current = await self._stored(context, history.policy_history(self.plane, request.service))
        return pb.ListPolicyHistoryResponse(versions=versions, revision=current)

    async def RollbackPolicy(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "RollbackPolicy")
        self._check_reason(request.reason)
        done = await self._stored(context, history.rollback_policy(self.plane, request, identity))
        return pb.RollbackPolicyResponse(change=done.changes[0], revision=done.revision)

    async def RollbackConfig(self, request, context):  # type: ignore[no-untyped-def]
        identity = await self.access.authorize_write(context, "RollbackConfig")
        self._check_reason(request.reason)
        done = await self._stored(context, history.rollback_config(self.plane, request, identity))
        return pb.RollbackConfigResponse(
            changes=done.changes, revision=done.revision, import_revision=done.undone
        )

    def _check_reason(self, reason: str) -> None:
        if len(reason) > self.limits.max_reason_length:
            raise ConfigurationError("reason", f"must be at most {self.limits.max_reason_length} characters")
        check_reason(reason)

    async def _stored(self, context: grpc.aio.ServicerContext, work: Awaitable[_T]) -> _T:
        """``work``'s answer; what the history cannot answer, or the store being away,
        said with its gRPC code."""
        try:
            return await work
        except history.HistoryError as err:
            code = grpc.StatusCode.ABORTED if err.conflict else grpc.StatusCode.NOT_FOUND
            await context.abort(code, str(err))
        except StoreUnavailable as err:
            raise StorageFailure("etcd", "read the audit records", str(err)) from err
        raise AssertionError("unreachable")  # abort raises

    # -- statistics ------------------------------------------------------------

    async def GetErrorStatistics(self, request, context):  # type: ignore[no-untyped-def]
        plane = self.plane
        try:
            page = Page.parse(request.page_size, request.page_token)
        except ValueError:
            raise ConfigurationError("page_token", "is not a token this server handed out") from None
        refused, capped = plane.reports.refused, plane.reports.rejections_capped
        stats = plane.stats.to_proto(
            plane.policies,
            plane.hub.connected_agents,
            plane.capacity.usage(),
            dict(refused),
            page,
            dict(capped),
        )
        stats.shadow_services.extend(plane.trials.to_proto())
        stats.retry_minimum_withheld.extend(plane.capacity.minimum_withheld())
        if not page.offset:  # one key per service a policy names: all on the first page
            stats.endpoint_reports_refused_by_service.update(plane.admission.endpoints_refused)
        stats.outside_changes = plane.audit_keeper.outside_changes
        stats.audit_records_pruned = plane.audit_keeper.pruned
        plane.ledger_stats(stats)
        shared = plane.hub.shared_names()
        stats.agent_ids_shared = len(shared)
        if not page.offset:
            stats.shared_agent_ids.extend(shared[:MAX_SHARED_SHOWN])
        response = pb.GetErrorStatisticsResponse(statistics=stats)
        if plane.stats.more(page) or page.more(refused, capped):
            response.next_page_token = str(page.offset + page.size)
        return response


def _reporter(sub: Subscriber, batch: pb.OutcomeBatch) -> str:
    """Whose outcomes ``batch`` holds: the agent a replica's relay passes it on for (the
    places for endpoint breakers are shared between agents, not between connections), else
    the sender's."""
    if sub.replica and batch.HasField("origin") and batch.origin.agent_id:
        return batch.origin.agent_id
    return sub.agent_id
