"""Run the control plane: store, engine, gRPC server with health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
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
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

from .control_plane import DEFAULT_PREFIX, ControlPlane
from .etcd_process import EtcdProcess, free_port
from .service import ControlPlaneServicer
from .store import EtcdStore

_log = logging.getLogger("mission_control.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_STATE_DIR = ".state"


@dataclass
class ServeOptions:
    listen: str = DEFAULT_LISTEN
    etcd: list[str] = field(default_factory=list)
    prefix: str = DEFAULT_PREFIX
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    instance_id: str = ""


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

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        self.plane.hub.close_all()
        await self.server.stop(grace)
        await self.plane.stop()
        await self.plane.store.close()
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown)


async def start_control_plane(
    store: EtcdStore, listen: str, *, prefix: str = DEFAULT_PREFIX, instance_id: str = ""
) -> RunningControlPlane:
    """Connect the store, load the state, and serve on ``listen``."""
    await store.connect()
    instance_id = instance_id or uuid.uuid4().hex[:12]
    telemetry = telemetry_from_env("control-plane", instance_id)
    plane = ControlPlane(store, prefix=prefix, instance_id=instance_id, telemetry=telemetry)
    interceptors: list[Any] = [aio_server_interceptor(agent="mission-control")]
    if telemetry is not None:
        interceptors.insert(0, telemetry.grpc_aio_server_interceptor())
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_ControlPlaneServiceServicer_to_server(ControlPlaneServicer(plane), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
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
    await plane.start()
    if plane.store_ok:
        await running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    return running


def _embedded_ports(state_dir: Path) -> tuple[int, int]:
    """Ports of the embedded etcd: the last ones used when still free, else new ones."""
    path = state_dir / "etcd-ports.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(path.read_text())
        client, peer = int(saved["client"]), int(saved["peer"])
        if _free(client) and _free(peer):
            return client, peer
    client, peer = free_port(), free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"client": client, "peer": peer}))
    return client, peer


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


async def serve(options: ServeOptions) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    embedded: EtcdProcess | None = None
    endpoints = options.etcd
    if not endpoints:
        client, peer = _embedded_ports(options.state_dir)
        embedded = EtcdProcess(
            options.state_dir / "etcd",
            client_port=client,
            peer_port=peer,
            log_file=options.state_dir / "etcd.log",
        )
        await asyncio.to_thread(embedded.start)
        endpoints = [embedded.endpoint]
        print(
            f"mission-control: embedded etcd at {embedded.endpoint} (data in {options.state_dir / 'etcd'})",
            flush=True,
        )
    try:
        store = EtcdStore(endpoints)
        running = await start_control_plane(
            store, options.listen, prefix=options.prefix, instance_id=options.instance_id
        )
        host = options.listen.rsplit(":", 1)[0]
        print(
            f"mission-control: serving on {host}:{running.port} "
            f"(etcd {','.join(endpoints)}, prefix {options.prefix}, pid {os.getpid()})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("mission-control: shutting down", flush=True)
        await running.stop()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
