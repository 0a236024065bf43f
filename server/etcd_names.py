"""etcd endpoints given by DNS name.

etcd3aio 0.3.0 turns the endpoints into one ``ipv4:`` gRPC target
(``etcd3aio/connections.py``, ``ConnectionManager.__init__``) and special-cases only
``localhost``; gRPC refuses any other name there ("invalid ipv4 address: 'e1'").
:class:`ResolvingEtcdClient` builds the target itself: names are resolved when it
connects, and again when the channel fails to connect and every ``reresolve_secs``
(cluster members move); when the addresses changed, the channel is replaced under the
client's services, so a retrying watch or call continues on the new one. Names that do not
resolve at all when it connects are treated as an etcd that does not answer: every call
fails until one resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from etcd3aio import Etcd3Client

__all__ = ["NoAddress", "ResolvingEtcdClient", "etcd_target", "resolve_host"]

_log = logging.getLogger("mission_control.server.etcd")

#: The target while no endpoint resolves: a socket that is never there, so that calls fail
#: at once, as with an etcd that is down.
NOWHERE = "unix:/nonexistent/mission-control/etcd-unresolved"

#: How soon the channel tries etcd again after failing to connect. gRPC's own backoff
#: grows to 120 s (1 s x 1.6 per attempt): after an etcd outage of 40 s its next attempt
#: could come 27 s after etcd was back, and until then every call failed at once ("Failed
#: to connect to remote host") — no write, so no record, so no fleet leases.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

#: (host, port) -> its addresses; socket.getaddrinfo by default, injectable in tests.
Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _has_names(endpoints: Sequence[str]) -> bool:
    return any(not _is_address(_split(e)[0]) for e in endpoints)


def etcd_target(endpoints: Sequence[str], resolve: Resolver = resolve_host) -> str:
    """The gRPC target of ``endpoints`` (``host:port``, by address or by name): every
    IPv4 address of them, or every IPv6 one when none has IPv4 (gRPC takes one family per
    target). Raises OSError when no endpoint resolves."""
    v4: list[str] = []
    v6: list[str] = []
    problems = []
    for endpoint in endpoints:
        host, port = _split(endpoint)
        try:
            addresses = [host] if _is_address(host) else resolve(host, port)
        except OSError as err:
            problems.append(f"{host}: {err.strerror or err}")
            continue
        for address in addresses:
            if ipaddress.ip_address(address).version == 4:
                v4.append(f"{address}:{port}")
            else:
                v6.append(f"[{address}]:{port}")
    if v4:
        return "ipv4:" + ",".join(dict.fromkeys(v4))
    if v6:
        return "ipv6:" + ",".join(dict.fromkeys(v6))
    raise NoAddress(endpoints, f"no address ({'; '.join(problems) or 'none found'})")


class NoAddress(OSError):
    """No endpoint resolves to an address (yet: in Kubernetes, etcd's DNS records appear
    only once its pods run)."""

    def __init__(self, endpoints: Sequence[str], reason: str) -> None:
        super().__init__(f"etcd {','.join(endpoints)}: {reason}")
        self.reason = reason


class ResolvingEtcdClient(Etcd3Client):
    """:class:`etcd3aio.Etcd3Client` whose endpoints may be DNS names (see the module)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        resolve: Resolver = resolve_host,
        reresolve_secs: float = 10.0,
        **options: Any,
    ) -> None:
        names = {_split(e)[0] for e in endpoints if not _is_address(_split(e)[0])}
        if len(names) == 1 and options.get("tls_server_name") is None:
            # the target holds addresses: verify the certificate against the name instead
            options["tls_server_name"] = names.pop()
        super().__init__(endpoints, **options)
        self._manager.grpc_options.extend(RECONNECT_OPTIONS)
        self._endpoints = list(endpoints)
        self._resolve = resolve
        self._reresolve_secs = reresolve_secs
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        #: replaced channels, closed once the calls still on them have ended (see _retire)
        self._retired: dict[grpc.aio.Channel, asyncio.Task[None]] = {}
        #: Why no endpoint has an address, until one resolves (None once one has).
        self.unresolved: str | None = None

    async def connect(self) -> None:
        """Connect; endpoints that do not resolve yet count as unreachable (see ``unresolved``)."""
        try:
            self._manager.target = await asyncio.to_thread(etcd_target, self._endpoints, self._resolve)
        except NoAddress as err:
            # like an etcd that does not answer: every call fails until a name resolves
            self.unresolved = err.reason
            self._manager.target = NOWHERE
        await super().connect()
        if _has_names(self._endpoints) and self._follower is None:
            self._follower = asyncio.create_task(self._follow(), name="etcd-names")

    async def close(self) -> None:
        if self._follower is not None:
            # Python 3.11's wait_for loses a cancel that arrives as the state change it
            # waits for completes: the follower would go on forever and close would wait
            # for it. The flag ends it at its next turn whatever happened to the cancel.
            self._closing = True
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
            self._closing = False
        for channel, task in list(self._retired.items()):
            task.cancel()
            await channel.close(None)
        self._retired.clear()
        await super().close()

    async def _follow(self) -> None:
        while self._channel is not None and not self._closing:
            channel = self._channel
            state = channel.get_state()
            patience = self._reresolve_secs if self.unresolved is None else min(self._reresolve_secs, 1.0)
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), patience)
            except TimeoutError:
                await self._reresolve()  # members may have moved while it worked
                continue
            if channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                await self._reresolve()

    async def _reresolve(self) -> None:
        try:
            target = await asyncio.to_thread(etcd_target, self._endpoints, self._resolve)
        except OSError as err:
            _log.debug("re-resolving etcd endpoints failed (%s); keeping %s", err, self._manager.target)
            return
        self.unresolved = None
        old = self._channel
        if target == self._manager.target or old is None:
            return
        _log.info("etcd %s now at %s", ",".join(self._endpoints), target)
        self._manager.target = target
        new = self._manager.get_channel(**self._conn_args, tls_server_name=self._tls_server_name)
        for service in (self.auth, self.cluster, self.kv, self.lease, self.maintenance, self.watch):
            if service is not None:  # their next call, or retry, goes to the new channel
                service._stub = type(service._stub)(new)  # type: ignore[attr-defined]
        self._channel = new
        self._retire(old)

    def _retire(self, channel: grpc.aio.Channel, after: float = 5.0) -> None:
        """Close ``channel`` once the calls still on it have met their deadlines (a store
        call's is 2 s): closed at once, a call in flight would be cancelled under its caller."""

        async def close_later() -> None:
            await asyncio.sleep(after)
            self._retired.pop(channel, None)
            await channel.close(None)

        self._retired[channel] = asyncio.create_task(close_later(), name="etcd-retired-channel")
