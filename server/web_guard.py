"""What the dashboard's HTTP server refuses before any page or action runs.

* **Too many connections, or a first request that never arrives** (slow clients holding
  sockets): at most :data:`MAX_CONNECTIONS` at once — the rest are closed at once, so the
  control plane's own file descriptors are never the dashboard's to spend — and a connection
  that has not sent a whole request within :data:`FIRST_REQUEST_SECS` is closed.
* **A foreign Host** on a loopback dashboard (DNS rebinding: a page of another site whose
  name resolves to 127.0.0.1 would otherwise be "same origin" with it): only loopback names
  are served there.
* **Cross-site actions**: a write must carry an ``Origin`` (when the browser sends one) that
  names this server.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

MAX_CONNECTIONS = 256
FIRST_REQUEST_SECS = 10.0
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(value: str) -> str:
    """The host part of a Host header or an origin's netloc (IPv6 in brackets kept whole)."""
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostRules:
    """Which Host headers and Origins a dashboard listening on ``listen`` answers."""

    def __init__(self, listen: str) -> None:
        self.loopback_only = _loopback(_host_of(listen))

    def host_allowed(self, host: str | None) -> bool:
        if not self.loopback_only:
            return True  # reached by whatever name the network gives it
        return host is not None and _loopback(_host_of(host))

    def origin_allowed(self, origin: str, request_host: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null", file:, extensions...
        return parts.netloc.lower() == request_host.lower() and self.host_allowed(parts.netloc)


def host_middleware(rules: HostRules) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check_host(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> web.StreamResponse:
        if not rules.host_allowed(request.headers.get("Host")):
            raise web.HTTPMisdirectedRequest(text="this dashboard answers only to loopback names\n")
        return await handler(request)  # type: ignore[no-any-return]

    return check_host


class _Limited(asyncio.Protocol):
    """An aiohttp connection, counted, and closed if its first request is too slow."""

    def __init__(self, gate: ConnectionGate, inner: Any) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self.gate.open) >= self.gate.limit:
            self.gate.refused += 1
            transport.abort()
            return
        self.transport = transport
        self.gate.open.add(self)
        self.timer = asyncio.get_running_loop().call_later(self.gate.first_request_secs, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        # The handler counts requests once their headers are parsed.
        if self.transport is not None and not getattr(self.inner, "_request_count", 1):
            self.gate.timed_out += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.gate.open.discard(self)
        self.inner.connection_lost(exc)


class ConnectionGate:
    """Wraps aiohttp's protocol factory with a connection limit and a first-request deadline."""

    def __init__(
        self,
        factory: Callable[[], Any],
        limit: int = MAX_CONNECTIONS,
        first_request_secs: float = FIRST_REQUEST_SECS,
    ) -> None:
        self.factory = factory
        self.limit = limit
        self.first_request_secs = first_request_secs
        self.open: set[_Limited] = set()
        self.refused = self.timed_out = 0

    def __call__(self) -> _Limited:
        return _Limited(self, self.factory())
