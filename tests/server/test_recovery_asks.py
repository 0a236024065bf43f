"""A recovery check asked of a real HTTP server on port 0 (the HTTP GET flavour): any 2xx
is SERVING, anything else NOT_SERVING, no answer within the timeout is a timeout, and a
closed port is unreachable."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from mission_control.client.recovery_check import RecoveryCheck
from mission_control.server.recovery_asks import TargetAsker


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(status=200)

    app = web.Application()
    app.add_routes([web.get("/ok", ok), web.get("/down", down), web.get("/slow", slow)])
    runner = web.AppRunner(app)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_http_check_reads_the_status_of_a_get(site: str) -> None:
    ask = TargetAsker()
    try:
        answers = {
            path: await ask(RecoveryCheck(f"{site}/{path}", timeout_secs=0.3))
            for path in ("ok", "down", "slow")
        }
        answers["closed"] = await ask(RecoveryCheck(f"http://127.0.0.1:{closed_port()}/", timeout_secs=0.3))
    finally:
        await ask.close()
    assert answers == {"ok": "SERVING", "down": "NOT_SERVING", "slow": "timeout", "closed": "unreachable"}
