"""``mission-control serve``: the embedded etcd when no cluster is given, the control plane,
and a clean stop on SIGINT or SIGTERM at any moment, the start included, that ends the
process within ``STOP_BOUND_SECS`` whatever etcd does (see :mod:`.shutdown`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

from .app import DASHBOARD_CANNOT_LISTEN, ServeOptions, bind_problem, start_control_plane
from .auth import AccessPolicy
from .etcd_keeper import keep_running
from .etcd_process import EtcdProcess
from .gc_tuning import tune_gc
from .log_repeats import quiet_repeats
from .shutdown import StopSteps, Watchdog
from .state_dir import StateLock, embedded_ports

__all__ = ["Interrupted", "serve"]


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while ``serve`` was starting; what it had started is stopped."""


async def serve(options: ServeOptions) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    Raises:
        OSError: ``options.listen`` cannot be bound.
        Interrupted: a signal arrived while the embedded etcd was starting.
        EtcdUnavailable: the embedded etcd did not start.
    """
    quiet_repeats()  # while etcd is down, the client library warns at every reconnect
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    steps = StopSteps()
    embedded: EtcdProcess | None = None
    watchdog = Watchdog(steps, last=lambda: embedded.kill() if embedded is not None else None)

    def stopping() -> None:
        if stop.is_set():  # a second signal: end now
            watchdog.now()
        stop.set()
        watchdog.arm()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    problem = bind_problem(options.listen)
    if problem is not None:
        raise OSError(f"cannot listen on {options.listen}: {problem}")
    problem = bind_problem(options.http, "--http") if options.http else None
    if problem is not None:
        raise OSError(f"{DASHBOARD_CANNOT_LISTEN} {options.http}: {problem}")
    lock: StateLock | None = None
    endpoints = options.etcd
    try:
        if not endpoints:
            # before anything in the folder is touched: it may be another serve's
            lock = StateLock(options.state_dir).acquire()
            client, peer = embedded_ports(options.state_dir)
            embedded = EtcdProcess(
                options.state_dir / "etcd",
                client_port=client,
                peer_port=peer,
                log_file=options.state_dir / "etcd.log",
                keep_fds=(lock.fd,) if lock.fd is not None else (),
            )
            await _unless_stopped(asyncio.to_thread(embedded.start), stop, embedded.abort)
            endpoints = [embedded.endpoint]
            lock.record(etcd=embedded.endpoint, etcd_pid=embedded.pid)
            print(
                f"mission-control: embedded etcd at {embedded.endpoint} "
                f"(data in {options.state_dir / 'etcd'}; `mission-control status` tells it again)",
                flush=True,
            )
        keeper = _keep(embedded, lock) if embedded is not None and lock is not None else None
        try:
            await _run(options, endpoints, stop, lock, steps)
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if lock is not None:
            lock.release()


def _keep(embedded: EtcdProcess, lock: StateLock) -> asyncio.Task[None]:
    """Restart the embedded etcd whenever it ends; the lock tells ``status`` meanwhile."""

    def down(pid: int | None) -> None:
        lock.record(etcd_down=True)

    def up(pid: int | None) -> None:
        lock.record(etcd_pid=pid, etcd_down=False)

    return asyncio.create_task(keep_running(embedded, down, up), name="keep the embedded etcd")


async def _unless_stopped(start: Awaitable[object], stop: asyncio.Event, abort: Callable[[], None]) -> None:
    """Await ``start``; when ``stop`` is set first, ``abort`` it, wait for it to end and
    raise Interrupted."""
    starting = asyncio.ensure_future(start)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        stopping.cancel()
        starting.result()
        return
    abort()
    with contextlib.suppress(Exception):
        await starting
    raise Interrupted()


async def _run(
    options: ServeOptions, endpoints: list[str], stop: asyncio.Event, lock: StateLock | None, steps: StopSteps
) -> None:
    store = options.etcd_access.store(endpoints)
    access = AccessPolicy.build(
        listen=options.listen,
        admin_tokens_file=options.admin_tokens_file,
        admin_identities=options.admin_identities,
        replica_identities=options.replica_identities,
        agent_tokens_file=options.agent_tokens_file,
    )
    running = await start_control_plane(
        store,
        options.listen,
        prefix=options.prefix,
        instance_id=options.instance_id,
        tls=options.tls,
        access=access,
        limits=options.limits,
        advertise=options.advertise,
        http=options.http,
        retention=options.retention,
    )
    tune_gc()
    host = options.listen.rsplit(":", 1)[0]
    if lock is not None:
        lock.record(listen=f"{host}:{running.port}")
    print(
        f"mission-control: serving on {host}:{running.port} "
        f"(etcd {','.join(endpoints)}, prefix {options.prefix}, pid {os.getpid()})",
        flush=True,
    )
    if running.dashboard is not None:
        scheme = "https" if options.tls else "http"
        print(f"mission-control: dashboard at {scheme}://{running.dashboard.address}/", flush=True)
    await stop.wait()  # set already when a signal came during the start: stop at once
    print("mission-control: shutting down", flush=True)
    await running.stop(steps=steps)
