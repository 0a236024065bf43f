"""The control plane over HTTP: a live dashboard, operator actions, ``/metrics``, ``/healthz``
and ``/readyz`` — served from the control plane's own event loop by aiohttp.

The page reads ``/api/state`` once and then follows ``/api/events`` (Server-Sent Events): a new
picture within 100 ms of a breaker change (the same watch ``WatchBreakers`` clients get) and
at least every second for the counters. Actions go through the same code as the gRPC
``SetBreakerState``, under the same rule: an admin token (``Authorization: Bearer``), or —
when no admin is configured — a dashboard listening on loopback only. Cross-site requests are
refused: an action must be JSON (a form cannot send it without a CORS preflight, which this
server never grants) and its ``Origin``, when present, must be this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
from importlib import resources
from typing import Any

from aiohttp import web
from mission_control.client.breaker import BreakerState
from mission_control.client.errors import MissionControlError, StorageFailure
from mission_control.client.policy import breaker_name_problem

from .audit import Author
from .auth import AccessPolicy, _matches, is_loopback
from .breaker_names import CREATE_HINT
from .control_plane import ControlPlane
from .fleet_view import STATE_NAMES, FleetActivity, Timeline, fleet_state
from .prometheus import CONTENT_TYPE, exposition, registry_for
from .web_guard import ConnectionGate, HostRules, host_middleware
from .web_json import dumps

_log = logging.getLogger("mission_control.server.web")

ACTIONS = {
    "force-open": BreakerState.FORCED_OPEN,
    "force-close": BreakerState.FORCED_CLOSED,
    "disable": BreakerState.DISABLED,
    "reset": BreakerState.CLOSED,
}
MAX_REASON = 512
#: Newest picture at most this often after a change; at least this often without one.
_SETTLE_SECS = 0.1
_REFRESH_SECS = 1.0
#: A picture asked for by ``/api/state`` is built again when older than this.
_FRESH_SECS = 0.5
#: Pages following the fleet at once (each holds one event stream).
MAX_WATCHERS = 64


class Dashboard:
    """The HTTP side of one control-plane replica.

    Args:
        plane: the running control plane.
        access: who may write (the gRPC server's policy; its admin tokens are used here).
        listen: HOST:PORT to serve on (port 0 picks a free one).
    """

    def __init__(
        self, plane: ControlPlane, access: AccessPolicy, listen: str, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.plane = plane
        self.tls = tls
        self.access = access
        self.listen = listen
        self.activity = FleetActivity()
        self.timeline = Timeline()
        self.open_writes = not access.admin_tokens and not access.admin_identities and is_loopback(listen)
        self.address = ""
        self._registry = registry_for(plane)
        self._version = 0
        self._state: bytes = b"{}"
        self._changed = asyncio.Condition()
        self._built_at = -1.0
        self.hosts = HostRules(listen)
        self.gate: ConnectionGate | None = None
        self.watchers = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024, middlewares=[host_middleware(self.hosts)])
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/static/{name}", self._static),
                web.get("/api/state", self._get_state),
                web.get("/api/events", self._events),
                web.post("/api/breakers/{name:.+}/{action}", self._act),  # endpoint breakers hold '/'
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0, keepalive_timeout=15.0
        )
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        bare = host.strip("[]") or "127.0.0.1"
        assert self._runner.server is not None
        self.gate = ConnectionGate(self._runner.server)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.gate, bare, int(port), ssl=self.tls, reuse_address=True)
        bound = self._server.sockets[0].getsockname()[1]
        self.address = f"[{bare}]:{bound}" if ":" in bare else f"{bare}:{bound}"
        self._refresh()
        self._tasks = [
            asyncio.create_task(self._follow_breakers(), name="dashboard.follow_breakers"),
            asyncio.create_task(self._tick(), name="dashboard.tick"),
        ]
        for task in self._tasks:
            task.add_done_callback(self.plane.task_failed)
        return self.address

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # an error was logged
                await task
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the picture -------------------------------------------------------------

    def _refresh(self) -> None:
        self._state = dumps(fleet_state(self.plane, self.activity, self.timeline))
        self._built_at = asyncio.get_running_loop().time()
        self._version += 1

    async def _publish(self) -> None:
        if not self.watchers:
            return  # nobody follows: build the picture when someone asks for it
        self._refresh()
        async with self._changed:
            self._changed.notify_all()

    async def _follow_breakers(self) -> None:
        sub = self.plane.hub.watch(frozenset())
        try:
            while True:
                message = await sub.next()
                if message is None:
                    return
                self.timeline.add(message.breaker, message.previous_state)  # type: ignore[attr-defined]
                await asyncio.sleep(_SETTLE_SECS)  # let a burst of changes settle into one picture
                while not sub.queue.empty():
                    more = await sub.next()
                    if more is None:
                        return
                    self.timeline.add(more.breaker, more.previous_state)  # type: ignore[attr-defined]
                await self._publish()
        finally:
            self.plane.hub.unwatch(sub)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_REFRESH_SECS)
            try:
                await self._publish()
            except Exception:  # a picture that cannot be built must not stop the page
                _log.exception("dashboard: could not build the fleet picture")

    # -- reading ---------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file("dashboard.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in {"dashboard.js", "dashboard.css", "favicon.svg"}:
            raise web.HTTPNotFound()
        return await self._static_file(name)

    async def _static_file(self, name: str) -> web.Response:
        body = resources.files("mission_control.server").joinpath("static", name).read_bytes()
        kind = _TYPES[name.rsplit(".", 1)[1]]
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=_SECURITY_HEADERS)

    async def _get_state(self, request: web.Request) -> web.Response:
        if asyncio.get_running_loop().time() - self._built_at > _FRESH_SECS:
            self._refresh()
        return web.Response(
            body=self._state, content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        if self.watchers >= MAX_WATCHERS:
            raise _error(429, f"{MAX_WATCHERS} pages follow this control plane already")
        self.watchers += 1
        try:
            await response.prepare(request)
            self._refresh()  # the newest picture for this page, then each change
            seen = -1
            while True:
                if seen == self._version:
                    async with self._changed:
                        await self._changed.wait_for(functools.partial(self._newer_than, seen))
                seen = self._version
                # A page that does not read is dropped rather than buffered: it reloads.
                await asyncio.wait_for(response.write(b"event: state\ndata: " + self._state + b"\n\n"), 5.0)
        except (ConnectionError, TimeoutError):  # the page went away or stopped reading
            return response
        finally:
            self.watchers -= 1

    def _newer_than(self, version: int) -> bool:
        return self._version != version

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self._registry), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reachable = self.plane.healthy, self.plane.store_ok  # as gRPC health says
        body: dict[str, Any] = {
            "status": "SERVING" if ready else "NOT_SERVING",
            "etcd": "reachable" if reachable else "unreachable",
        }
        if self.plane.failed_tasks:
            body["failed_tasks"] = list(self.plane.failed_tasks)
        return web.json_response(body, status=200 if ready else 503)

    # -- operator actions --------------------------------------------------------

    def _refuse_cross_site(self, request: web.Request) -> None:
        if request.content_type != "application/json":
            raise _error(415, "actions are JSON requests")
        origin = request.headers.get("Origin")
        if origin is not None and not self.hosts.origin_allowed(origin, request.host):
            raise _error(403, "cross-site request refused")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in {"same-origin", "none"}:
            raise _error(403, "cross-site request refused")

    def _authorize(self, request: web.Request) -> str:
        """The identity the audit records (as the gRPC server names it), or an error."""
        certified = sorted(self.access.admin_identities & _certificate_identities(request))
        if certified:
            return "cert:" + certified[0]
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if _matches(token.strip().encode(), self.access.admin_tokens):
                return "token:" + self.access.token_name(token.strip().encode())
            raise _error(403, "this token may not change breakers")
        if not self.open_writes:
            raise _error(401, "an admin token is needed to change breakers")
        return "local"

    async def _act(self, request: web.Request) -> web.Response:
        self._refuse_cross_site(request)
        identity = self._authorize(request)
        name, action = request.match_info["name"], request.match_info["action"]
        state = ACTIONS.get(action)
        if state is None:
            raise _error(404, f"no action {action!r} (one of {', '.join(ACTIONS)})")
        problem = breaker_name_problem(name)
        if problem:
            raise _error(400, f"name: {problem}")
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            raise _error(400, "the body must be a JSON object") from None
        reason = body.get("reason", "") if isinstance(body, dict) else None
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise _error(400, f"reason must be a string of at most {MAX_REASON} characters")
        if not reason.isprintable():
            raise _error(400, "reason must be printable text (no newlines or control characters)")
        if state is not BreakerState.CLOSED and not reason.strip():
            raise _error(400, "reason is required to force or disable a breaker: say why")
        unknown = self.plane.unknown_breaker(name)  # the dashboard makes no new breaker
        if unknown:
            raise _error(404, unknown.replace(CREATE_HINT, "the CLI's --create makes a new one"))
        try:
            breaker = await self.plane.set_breaker_state(name, state, reason, Author(identity, reason))
        except StorageFailure as err:
            raise _error(503, err.technical_display()) from None
        except MissionControlError as err:
            raise _error(400, err.technical_display()) from None
        _log.info("dashboard: %s %s (%s)", action, name, reason or "no reason given")
        await self._publish()
        return web.json_response(
            {"name": breaker.name, "state": STATE_NAMES.get(breaker.state, ""), "reason": breaker.reason}
        )


def _certificate_identities(request: web.Request) -> set[str]:
    """SAN and CN of a verified client certificate (HTTPS with a client CA only)."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return set()
    names = {value for kind, value in cert.get("subjectAltName", ()) if kind in {"DNS", "URI", "email"}}
    names |= {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    return names


_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
_NO_STORE = {"Cache-Control": "no-store"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _error(status: int, message: str) -> web.HTTPException:
    kinds: dict[int, Any] = {
        400: web.HTTPBadRequest,
        429: web.HTTPTooManyRequests,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        415: web.HTTPUnsupportedMediaType,
        503: web.HTTPServiceUnavailable,
    }
    return kinds[status](text=json.dumps({"error": message}), content_type="application/json")
