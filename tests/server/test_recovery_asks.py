"""A recovery check asked of a real HTTP server on port 0 (the HTTP GET flavour): any 2xx
is SERVING, anything else NOT_SERVING, no answer within the timeout is a timeout, and a
closed port is unreachable."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mission_control.client.recovery_check import RecoveryCheck
from mission_control.server.recovery_asks import TargetAsker


@pytest.fixture
async def site() -> AsyncIterator[str]:
    released = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def slow(request: web.Request) -> web.Response:
        await released.wait()  # answers only at the end of the test: never within a timeout
        return web.Response(status=200)

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/down", down), web.get("/slow", slow)])
    runner = web.AppRunner(app)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    released.set()
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_http_check_reads_the_status_of_a_get(site: str) -> None:
    # The timeout covers making the HTTP session and connecting, which a loaded machine
    # can take longer than a short one for: the answers that come are given time to; the
    # one that never comes is a timeout whatever the timeout is.
    ask = TargetAsker()
    try:
        answers = {
            path: await ask(RecoveryCheck(f"{site}/{path}", timeout_secs=timeout))
            for path, timeout in (("ok", 30.0), ("down", 30.0), ("slow", 0.3))
        }
        answers["closed"] = await ask(RecoveryCheck(f"http://127.0.0.1:{closed_port()}/", timeout_secs=30.0))
    finally:
        await ask.close()
    assert answers == {"ok": "SERVING", "down": "NOT_SERVING", "slow": "timeout", "closed": "unreachable"}


async def test_a_grpc_check_never_reads_its_host_as_a_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stored check is validated (such a host is refused); the asker does not rely on it.
    monkeypatch.chdir(tmp_path)
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port("unix:1234")  # a local socket named 1234, in the test's folder
    await server.start()
    check = RecoveryCheck("localhost:1234", timeout_secs=2.0)
    object.__setattr__(check, "target", "unix:1234")
    ask = TargetAsker()
    try:
        async with grpc.aio.insecure_channel("unix:1234") as channel:  # what gRPC alone would ask
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await ask(check) != "SERVING"
    finally:
        await ask.close()
        await server.stop(None)


async def test_lookups_that_hang_time_out_and_leave_the_default_executor_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released = threading.Event()
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.example":  # a name server that never answers
            released.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    ask = TargetAsker()
    try:
        checks = [RecoveryCheck(f"http://hangs.example:{8000 + i}/", timeout_secs=0.2) for i in range(16)]
        assert await asyncio.gather(*(ask(c) for c in checks)) == ["timeout"] * 16
        # the server's default executor (used by others) still runs work
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "ran"), 30) == "ran"
    finally:
        released.set()
        await ask.close()
