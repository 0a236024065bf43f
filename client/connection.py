"""The agent's one Connect stream to the control plane, run on a background thread.

It says hello, applies the snapshot and every update to the :class:`LocalView`, and
sends outcome batches: at once after a failure (so the fleet learns quickly), else every
``flush_interval``. It reconnects with jittered backoff, trying the endpoints in turn.
Nothing here is on a call's path: the hot path only adds to counters and, on a failure,
nudges this thread.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2

from .clock_offset import ClockOffset, disagree
from .config import policy_from_proto
from .errors import ConfigurationError
from .policy import ServicePolicy
from .view import EndpointState, LocalView, UnackedBatches

_log = logging.getLogger("mission_control.client")

_WAKE = object()
MAX_UNACKED = 1000
#: The agent pings the control plane every 10 s, to notice a dead peer (the control plane's
#: server permits pings that often), and gives up on the stream when no answer came in 5 s —
#: also while it sends reports: on a connection carrying data grpc otherwise waits its
#: `ping_timeout_ms` (60 s) for the answer.
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
]
_STOP = object()


class ControlPlaneConnection:
    """Keeps a Connect stream up and the local view fresh.

    Args:
        endpoints: control-plane addresses (``host:port``), tried in turn.
        agent_id / session_id: who this agent is.
        view: what the stream keeps fresh.
        services: services the agent calls, announced in the hello.
        flush_interval: longest wait before outcomes are sent.
        credentials: channel credentials for TLS; plaintext when None.
        token: this agent's bearer token, when the control plane requires one.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        agent_id: str,
        session_id: str,
        view: LocalView,
        *,
        services: Sequence[str] = (),
        flush_interval: float = 0.05,
        credentials: grpc.ChannelCredentials | None = None,
        max_backoff: float = 5.0,
        telemetry: Any = None,
        token: str | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigurationError("control_plane", "at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.agent_id = agent_id
        self.session_id = session_id
        #: This process's instance: two processes configured with one agent id are two agents.
        self.instance = uuid.uuid4().hex
        self.view = view
        self.services = tuple(services)
        self.flush_interval = flush_interval
        self._idle_swept = -1e18
        self.credentials = credentials
        self.max_backoff = max_backoff
        self.telemetry = telemetry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake_pending = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: grpc.Future | None = None
        self._epoch = 0
        #: The clock of the control plane on the current stream, as measured from its
        #: messages (``sent_at``): measured anew on each stream, for a control plane
        #: restarted on its address (or another replica behind it) may run another clock.
        self._offsets: dict[str, ClockOffset] = {}
        #: Batches sent but not yet acknowledged; sent again after a reconnect.
        self._unacked = UnackedBatches(MAX_UNACKED)
        #: Outcome batches and probe requests sent; streams opened; reconnects.
        self.batches_sent = 0
        self.streams_opened = 0
        self.current_endpoint: str | None = None
        self.connected_event = threading.Event()
        #: Set by a snapshot of a control plane that has read its store (not ``partial``):
        #: the fleet's state, not only a link to it. Cleared with the stream.
        self.complete_event = threading.Event()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"mission-control-{self.agent_id}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is left, close the stream, end the thread."""
        self._stopping.set()
        self._outbox.put(_STOP)
        call = self._call
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and call is not None:
                call.cancel()
                thread.join(timeout)
        self._thread = None

    # -- called from the hot path ----------------------------------------------

    def nudge(self) -> None:
        """Send outcomes now rather than at the next interval (after a failure)."""
        if not self._wake_pending:
            self._wake_pending = True
            self._outbox.put(_WAKE)

    def ask_probe(self, service: str) -> None:
        """Ask the fleet for a probe permit (at most every 100 ms per service)."""
        state = self.view.get(service)
        now = self.view.clock()
        if now - state.probe_asked_at < 0.1:
            return
        state.probe_asked_at = now
        with state.lock:
            state.permits.want(now)
        self._outbox.put(pb.ConnectRequest(probe_request=pb.ProbeRequest(service=service)))

    # -- the stream ------------------------------------------------------------

    def _candidates(self) -> list[str]:
        """The endpoints, with DNS names expanded to every address they resolve to (not
        with TLS, whose certificates name hosts, not addresses)."""
        if self.credentials is not None:
            return list(self.endpoints)
        found: list[str] = []
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            host = host.strip("[]")
            try:
                ipaddress.ip_address(host)
                addresses = [host]
            except ValueError:
                try:
                    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                    addresses = sorted({str(info[4][0]) for info in infos})
                except (OSError, ValueError):
                    addresses = []
                if not addresses:
                    found.append(endpoint)  # let gRPC report why it cannot be reached
                    continue
            found += [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]
        return found or list(self.endpoints)

    def _run(self) -> None:
        backoff = 0.05
        # agents spread over the replicas: each starts at a random one
        attempt = random.randrange(1_000_000)
        while not self._stopping.is_set():
            candidates = self._candidates()
            endpoint = candidates[attempt % len(candidates)]
            attempt += 1
            started = time.monotonic()
            try:
                self._stream(endpoint)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if not self._stopping.is_set():
                    _log.info("control plane %s: stream ended (%s)", endpoint, code)
            except Exception:
                _log.exception("control plane %s: unexpected error", endpoint)
            finally:
                self.view.forget_fleet()
                self.connected_event.clear()
                self.complete_event.clear()
                self.current_endpoint = None
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 5.0:
                backoff = 0.05  # it was up for a while: reconnect quickly
            delay = backoff * (0.5 + random.random())
            self._stopping.wait(delay)
            backoff = min(backoff * 2, self.max_backoff)

    def _channel(self, endpoint: str) -> grpc.Channel:
        options = KEEPALIVE
        if self.credentials is not None:
            channel = grpc.secure_channel(endpoint, self.credentials, options=options)
        else:
            channel = grpc.insecure_channel(endpoint, options=options)
        if self.telemetry is not None:
            from opentelemetry.instrumentation.grpc import grpcext

            channel = grpcext.intercept_channel(channel, self.telemetry.grpc_client_interceptor())
        return channel

    def _stream(self, endpoint: str) -> None:
        self._epoch += 1
        with self._channel(endpoint) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)
            call = stub.Connect(self._requests(self._epoch), metadata=self._metadata)
            self._call = call
            self.streams_opened += 1
            self._offsets = {endpoint: ClockOffset()}
            try:
                for response in call:
                    if response.HasField("sent_at"):
                        self._sampled(endpoint, response.sent_at.ToNanoseconds() / 1e9)
                    self._apply(response, endpoint)
            finally:
                self._call = None
                call.cancel()

    def _requests(self, epoch: int) -> Iterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(
            hello=pb.AgentHello(
                agent_id=self.agent_id,
                session_id=self.session_id,
                services=self.services,
                outcome_series=self._unacked.series,
                instance=self.instance,
                held_generations=self.view.held_generations(self.services),
            )
        )
        resent = False
        while True:
            try:
                item = self._outbox.get(timeout=self.flush_interval)
            except queue.Empty:
                item = _WAKE
            if item is _WAKE:
                self._wake_pending = False
            if epoch != self._epoch:
                return  # a newer stream took over: this one must not take outcomes any more
            # Outcomes are only taken once this stream's snapshot arrived: a stream that
            # never got through would lose them.
            connected = self.connected_event.is_set()
            if item is _STOP:
                self.view.give_back_permits()
            if connected and not resent:
                # what an earlier stream did not get acknowledged goes again, as it was
                resent = True
                again = self._unacked.resend(marked=True)
                # first: probes of the stream before still running (said even when none
                # is, while a breaker probes: the control plane frees the others' permits);
                # numbered after the ones sent again, its acknowledgement covers only itself
                said = self.view.running_said()
                if said or self.view.probing():
                    yield pb.ConnectRequest(outcomes=self._unacked.batch(said, ahead=True))
                yield from (pb.ConnectRequest(outcomes=b) for b in again)
            batch = self._batch() if connected else None
            if batch is not None:
                yield batch
            demand = self._demand(epoch, leaving=item is _STOP) if connected else None
            if demand is not None:
                yield demand
            if item is _STOP:
                return
            if isinstance(item, pb.ConnectRequest) and not self._stale_ask(item):
                yield item

    def _stale_ask(self, request: pb.ConnectRequest) -> bool:
        """A probe request queued before the stream broke, for a service whose probe under
        a permit of that stream still runs: sent first on the new stream, before the batch
        that says the probe runs, it would get a second permit beside it."""
        if not request.HasField("probe_request"):
            return False
        state = self.view.services.get(request.probe_request.service)
        return state is not None and state.probes.any_before(self.view.stream)

    def _batch(self) -> pb.ConnectRequest | None:
        now = self.view.clock()
        if now - self._idle_swept >= 1.0:
            self._idle_swept = now
            self.view.forget_idle(now)
        summaries = []
        for name, state in list(self.view.services.items()):
            tally = state.drain(self.view.clock())
            if tally is not None:
                summaries.append(tally.to_proto(name))
        if not summaries:
            return None
        self.batches_sent += 1
        return pb.ConnectRequest(outcomes=self._unacked.batch(summaries))

    def _demand(self, epoch: int, leaving: bool = False) -> pb.ConnectRequest | None:
        """What this agent asked of each fleet-shared limit in its last finished period; a
        new stream first says which limits it shares (so it gets leases at once), with what
        it spends without a lease (so a new leader keeps that much aside until it is leased)."""
        demands = []
        for name, state in list(self.view.services.items()):
            if isinstance(state, EndpointState):
                continue  # its leases are its service's, reported under the service
            with state.lock:
                for resource, budget in state.leased.items():
                    budget.tick(self.view.clock())
                    reports = budget.drain_reports()
                    if reports or leaving or budget.announced != epoch:
                        demand = pb.CapacityDemand(
                            service=name,
                            resource=resource,
                            agents_known=budget.agents,
                            safe_units=budget.claim(self.view.clock()),
                            leaving=leaving,
                            agents=1,
                            held_epoch=budget.epoch,
                        )
                        if reports:
                            last = reports[-1]
                            demand.period, demand.wanted, demand.used = last.period, last.wanted, last.used
                            demand.leased = last.leased
                        demands.append(demand)
                    budget.announced = epoch
        if not demands:
            return None
        return pb.ConnectRequest(demand=pb.CapacityDemandReport(demands=demands))

    def _sampled(self, endpoint: str, sent_at: float) -> None:
        offset = self._offsets.get(endpoint)
        if offset is None:
            offset = self._offsets[endpoint] = ClockOffset()
        view = self.view
        offset.sample(sent_at, view.clock())
        estimate = offset.estimate()
        if estimate is not None:
            disagree(endpoint, estimate + view.wall() - view.clock())

    def _apply(self, response: pb.ConnectResponse, endpoint: str) -> None:
        kind = response.WhichOneof("message")
        view = self.view
        if kind == "snapshot":
            snapshot = response.snapshot
            policies = _policies_of(snapshot.policies, "policy")
            shadows = _policies_of(snapshot.shadow_policies, "shadow policy")
            view.apply_snapshot(policies, snapshot.breakers, partial=snapshot.partial, shadows=shadows)
            if snapshot.partial:
                _log.warning("control plane %s has not loaded its store: keeping the fleet state", endpoint)
            view.connected = True
            self.current_endpoint = endpoint
            self.connected_event.set()
            if not snapshot.partial:
                self.complete_event.set()
            _log.info("connected to control plane %s", endpoint)
        elif kind == "breaker":
            view.set_breaker(response.breaker)
        elif kind == "policy":
            update = response.policy
            if update.deleted:
                view.set_policy(update.service, None)
            else:
                try:
                    view.set_policy(update.service, policy_from_proto(update.policy))
                except ConfigurationError as err:
                    _log.error("ignored invalid policy %s from control plane: %s", update.service, err)
        elif kind == "shadow_policy":
            self._apply_shadow(response.shadow_policy)
        elif kind == "probe_grant":
            offset = self._offsets.get(endpoint)
            view.grant(response.probe_grant, offset.estimate() if offset is not None else None)
        elif kind == "lease":
            view.apply_lease(response.lease)
        elif kind == "outcome_ack":
            self._unacked.ack(response.outcome_ack.sequence)

    def _apply_shadow(self, update: pb.ShadowPolicyUpdate) -> None:
        if update.cleared:
            self.view.set_shadow(update.service, None)
            return
        candidate = _policies_of([update.policy], "shadow policy").get(update.service)
        if candidate is not None:
            self.view.set_shadow(update.service, candidate)


def _policies_of(messages: Iterable[policy_pb2.ServicePolicy], what: str) -> dict[str, ServicePolicy]:
    """The valid ones of ``messages``, by service; an invalid one is logged and left out."""
    policies = {}
    for message in messages:
        try:
            policies[message.service] = policy_from_proto(message)
        except ConfigurationError as err:
            _log.error("ignored invalid %s %s from control plane: %s", what, message.service, err)
    return policies
