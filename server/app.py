"""Run the control plane: store, engine, gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from mission_control.client.telemetry import Telemetry, telemetry_from_env
from mission_control.interceptors import aio_server_interceptor
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .audit import Retention
from .auth import AccessPolicy
from .control_plane import DEFAULT_PREFIX, ControlPlane
from .fleet_roster import FleetRoster
from .roster_publish import ReplicaRoster, RosterPublisher
from .serialize_once import add_servicer
from .service import ControlPlaneServicer, Limits
from .shutdown import GRACE_SECS, STEP_SECS, StopSteps, in_daemon_thread
from .store import EtcdStore, StoreUnavailable
from .web import Dashboard

_log = logging.getLogger("mission_control.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_STATE_DIR = ".state"
#: How a dashboard address that cannot be bound is reported (then the address and why).
DASHBOARD_CANNOT_LISTEN = "cannot serve the dashboard (--http) on"

#: Largest message the control plane accepts (a full config import fits many times over).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: How long a new call may wait for the event loop to take it before grpc cancels it.
UNREQUESTED_SECS = 300


@dataclass
class TlsFiles:
    """PEM files for the server: its certificate and key, and the CA that signs clients'
    certificates (mutual TLS: then every client must present one)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    #: CA of the other replicas' server certificates (default: client_ca).
    relay_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same certificate for HTTPS; with a client CA, every client must present a
        certificate it signed, as on the gRPC port."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            context.load_verify_locations(cafile=str(self.client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def relay_credentials(self) -> grpc.ChannelCredentials:
        """How this replica reaches the leader: TLS, presenting its own certificate."""
        ca = self.relay_ca or self.client_ca
        return grpc.ssl_channel_credentials(
            ca.read_bytes() if ca else None, self.key.read_bytes(), self.cert.read_bytes()
        )


@dataclass
class EtcdAccess:
    """How to reach etcd: TLS files and user/password (the password never on a command line)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def store(self, endpoints: list[str]) -> EtcdStore:
        return EtcdStore(
            endpoints,
            user=self.user,
            password=self.password,
            ca_cert=self.ca.read_bytes() if self.ca else None,
            cert_chain=self.cert.read_bytes() if self.cert else None,
            cert_key=self.key.read_bytes() if self.key else None,
        )


@dataclass
class ServeOptions:
    listen: str = DEFAULT_LISTEN
    etcd: list[str] = field(default_factory=list)
    prefix: str = DEFAULT_PREFIX
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    instance_id: str = ""
    tls: TlsFiles | None = None
    etcd_access: EtcdAccess = field(default_factory=EtcdAccess)
    admin_tokens_file: Path | None = None
    admin_identities: tuple[str, ...] = ()
    replica_identities: tuple[str, ...] = ()
    agent_tokens_file: Path | None = None
    limits: Limits = field(default_factory=Limits)
    advertise: str | None = None
    http: str | None = None
    retention: Retention = field(default_factory=Retention)


class RunningControlPlane:
    """A started server; ``port`` is the bound port (useful with ``:0``)."""

    def __init__(
        self, plane: ControlPlane, server: grpc.aio.Server, port: int, telemetry: Telemetry | None = None
    ) -> None:
        self.telemetry = telemetry
        self.plane = plane
        self.server = server
        self.port = port
        self.health = HealthServicer()
        self.dashboard: Dashboard | None = None
        self.roster: ReplicaRoster | None = None

    async def stop(self, grace: float = GRACE_SECS, steps: StopSteps | None = None) -> None:
        """Stop serving, every step within its bound (see :mod:`.shutdown`): a step that
        does not end in time (etcd paused, an exporter that does not answer) is logged
        and left behind. ``steps``: where the step running now is shown."""
        steps = steps or StopSteps()
        if self.dashboard is not None:
            await steps.run("dashboard", self.dashboard.stop())
        if self.roster is not None:
            await steps.run("replica roster", self.roster.stop())
        await steps.run("health", self.health.enter_graceful_shutdown())
        self.plane.hub.close_all()
        await steps.run("server", self.server.stop(grace), grace + STEP_SECS["server"])
        await steps.run("control plane", self.plane.stop())
        await steps.run("etcd client", self.plane.store.close())
        if self.telemetry is not None:
            await steps.run("telemetry", in_daemon_thread(self.telemetry.shutdown, "telemetry-shutdown"))


#: How often agents and relays ping the control plane on a quiet stream.
PEER_PING_SECS = 10
#: The server pings every peer this often, and ends a connection whose ping goes unanswered
#: this long.
KEEPALIVE_SECS = 10
KEEPALIVE_TIMEOUT_SECS = 5


def server_options(limits: Limits) -> list[tuple[str, Any]]:
    """grpc's channel arguments for the control plane's server."""
    # grpc queues calls the event loop has not taken yet and, past 1,000 of them, refuses
    # new ones at random (all past 3,000): a fleet reconnecting at once after a restart or
    # a failover would see a share of its streams fail. Queue a whole fleet instead.
    pending = max(1_000, 2 * limits.max_agents)
    return [
        ("grpc.so_reuseport", 0),
        # agents and relays ping every 10 s on quiet streams to notice a dead peer: allow
        # twice that rate (a stricter policy ends their connection with too_many_pings)
        ("grpc.http2.min_ping_interval_without_data_ms", PEER_PING_SECS * 1000 // 2),
        ("grpc.keepalive_permit_without_calls", 1),
        # and the server pings its peers too (10 s, 5 s to answer)
        ("grpc.keepalive_time_ms", KEEPALIVE_SECS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_SECS * 1000),
        # grpc waits this long for the answer to a ping (default 60 s) when the connection
        # carries data: then keepalive_timeout alone does not end it. A follower behind a
        # stalled link (no RST, no FIN) that the leader sends leases kept its stream, and its
        # share of a fleet limit, for ~70 s without this (an idle connection: 15 s)
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_SECS * 1000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", 2 * pending),
        # and cancels a call still queued after 30 s: 10,000 agents connecting at once to a
        # busy 2-core plane lost a third of their streams that way, and came back to retry
        ("grpc.server_max_unrequested_time_in_server", UNREQUESTED_SECS),
    ]


async def start_control_plane(
    store: EtcdStore,
    listen: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    instance_id: str = "",
    tls: TlsFiles | None = None,
    access: AccessPolicy | None = None,
    limits: Limits | None = None,
    advertise: str | None = None,
    http: str | None = None,
    retention: Retention | None = None,
) -> RunningControlPlane:
    """Connect the store, load the state, and serve on ``listen`` (and the dashboard, metrics
    and HTTP health on ``http`` when given)."""
    await store.connect()
    instance_id = instance_id or uuid.uuid4().hex[:12]
    telemetry = telemetry_from_env("control-plane", instance_id)
    plane = ControlPlane(
        store, prefix=prefix, instance_id=instance_id, telemetry=telemetry, retention=retention
    )
    interceptors: list[Any] = [aio_server_interceptor(agent="mission-control")]
    if telemetry is not None:
        interceptors.insert(0, telemetry.grpc_aio_server_interceptor())
    access = access or AccessPolicy.build(listen=listen)
    servicer = ControlPlaneServicer(plane, access, limits)
    server = grpc.aio.server(interceptors=interceptors, options=server_options(servicer.limits))
    plane.admission.limits = dataclasses.replace(
        plane.admission.limits,
        total=servicer.limits.max_unnamed_services,
        per_agent=servicer.limits.max_unnamed_services_per_agent,
    )
    rate = servicer.limits.max_summaries_per_sec
    plane.reports.limits = dataclasses.replace(
        plane.reports.limits,
        summaries_per_sec=rate,
        summaries_burst=max(2 * rate, servicer.limits.max_summaries_per_batch),
    )
    add_servicer(servicer, server)
    try:
        port = server.add_secure_port(listen, tls.credentials()) if tls else server.add_insecure_port(listen)
    except RuntimeError:  # grpc says only "Failed to bind"
        port = 0
    if port == 0:
        await store.close()
        problem = bind_problem(listen) or "refused by gRPC (is it a HOST:PORT of this machine?)"
        raise OSError(f"cannot listen on {listen}: {problem}")
    # With mutual TLS and replica identities a replica relays as itself (its certificate),
    # not as an admin; otherwise it presents the first admin token, if any.
    as_replica = tls is not None and tls.client_ca is not None and bool(access.replica_identities)
    relay_token = access.admin_tokens[0].decode() if access.admin_tokens and not as_replica else None
    relay_credentials = tls.relay_credentials() if tls is not None else None
    plane.enable_leadership(
        advertise or _advertised(listen, port), token=relay_token, credentials=relay_credentials
    )
    running = RunningControlPlane(plane, server, port, telemetry)
    health_pb2_grpc.add_HealthServicer_to_server(running.health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def on_health(ok: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        task = loop.create_task(running.health.set(SERVICE_NAME, status))
        pending.add(task)
        task.add_done_callback(pending.discard)

    plane.health_listeners.append(on_health)
    await running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    problem = await _unreachable(store)
    if problem:
        _log.warning(
            "etcd %s unreachable (%s): serving NOT_SERVING from defaults until it answers",
            ",".join(store.endpoints),
            problem,
        )
    await plane.start(load_timeout=0.0 if problem else 10.0)
    if plane.healthy:
        await running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    if http:
        running.dashboard = Dashboard(plane, access, http, tls=tls.ssl_context() if tls else None)
        plane.outcome_listeners.append(running.dashboard.activity.record)
        try:
            await running.dashboard.start()
        except OSError as err:
            await running.stop(grace=0)
            raise OSError(f"{DASHBOARD_CANNOT_LISTEN} {http}: {err.strerror or err}") from err
    _start_roster(running)
    return running


def _start_roster(running: RunningControlPlane) -> None:
    """Publish this replica's agents and follow every replica's (for the dashboard)."""
    plane, dashboard = running.plane, running.dashboard
    counters = (lambda: dashboard.activity.by(0)) if dashboard is not None else None
    publisher = RosterPublisher(
        plane.store, plane.writer, plane.hub, plane.prefix, plane.instance_id, counters=counters
    )
    plane.roster = FleetRoster(plane.store, plane.prefix)
    running.roster = ReplicaRoster(publisher, plane.roster, plane.task_failed)
    plane.sync.lost_data_listeners += [plane.roster.reload, publisher.republish]
    running.roster.start()


async def _unreachable(store: EtcdStore, timeout: float = 1.5) -> str:
    """Why etcd does not answer now ('' when it does): asked once, so that a dead etcd at
    start costs no load timeout."""
    try:
        await asyncio.wait_for(store.ping(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except StoreUnavailable as err:
        if store.unresolved is not None:
            return f"{store.unresolved}; resolving it again until it has one"
        return str(err)
    return ""


def bind_problem(listen: str, flag: str = "--listen") -> str | None:
    """The operating system's reason ``listen`` cannot be bound (gRPC does not say), or
    None when it can; ``flag`` is the option that chose it, named when the port is taken."""
    host, _, port = listen.rpartition(":")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        if isinstance(err, OSError) and err.errno == errno.EADDRINUSE:
            other = "mission-control" if flag == "--listen" else "program"
            reason += f" (another {other}? choose another with {flag} HOST:PORT)"
        return reason
    return None


def _advertised(listen: str, port: int) -> str:
    """Where other replicas reach this one: the listen host, or this host's name when it
    listens on every interface."""
    host = listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"
