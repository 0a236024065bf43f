"""In-memory Connect streams between agents (or follower replicas) and a replica's servicer.

A :class:`Link` is one gRPC stream: messages keep their order in each direction but each
takes a random delay. It can break at any moment (a replica crashed, a partition, a dead
TCP connection): messages on their way to the server may still arrive before the server
sees the break (so the client never learns they were taken), messages on their way back
are lost, and the server's handler ends as gRPC ends it (its generator is closed). The real
``ControlPlaneServicer.Connect`` serves it, with a context that only says who is calling.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.auth import AccessPolicy
from mission_control.server.service import ControlPlaneServicer

#: The bearer token follower replicas relay with (an admin identity, as in production).
RELAY_TOKEN = "sim-relay"


class LinkBroken(ConnectionResetError):
    """The stream is gone (what a client sees as UNAVAILABLE)."""


class Aborted(Exception):
    """The servicer ended the stream with an error status."""


class SimAccess(AccessPolicy):
    """No authentication, except that replicas relaying say so with a token."""

    def is_admin(self, context: Any) -> bool:
        return (("authorization", f"Bearer {RELAY_TOKEN}")) in (context.invocation_metadata() or ())


class _Context:
    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...] | None) -> None:
        self._peer = peer
        self._metadata = metadata or ()

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, Any]:
        return {}

    async def abort(self, code: Any, details: str = "") -> None:
        raise Aborted(f"{code}: {details}")


class Link:
    """One stream from ``client`` to a servicer.

    Args:
        on_delivered: called with each request the server's handler takes.
        serializer: the server's response serializer (it stamps ``sent_at``): each
            response is sent as the bytes it makes as the stream takes it, read back; None:
            the very object goes.
    """

    def __init__(
        self,
        rng: random.Random,
        servicer: ControlPlaneServicer,
        client: str,
        requests: AsyncIterator[pb.ConnectRequest],
        metadata: tuple[tuple[str, str], ...] | None = None,
        *,
        max_delay: float = 0.03,
        on_delivered: Callable[[pb.ConnectRequest], None] = lambda r: None,
        serializer: Callable[[pb.ConnectResponse], bytes] | None = None,
    ) -> None:
        self.rng = rng
        self.client = client
        self.max_delay = max_delay
        self.on_delivered = on_delivered
        self.serializer = serializer
        self.broken = False
        self._up: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self._down: asyncio.Queue[pb.ConnectResponse | BaseException | None] = asyncio.Queue()
        self._up_at = 0.0
        self._down_at = 0.0
        self._in_flight: list[asyncio.TimerHandle] = []
        self._requests = requests
        context = _Context(f"sim:{client}", metadata)
        self._handler = servicer.Connect(self._server_requests(), context)  # type: ignore[arg-type]
        self._tasks = [
            asyncio.create_task(self._pump_up(), name=f"link-up-{client}"),
            asyncio.create_task(self._pump_down(), name=f"link-down-{client}"),
        ]

    def _deliver_at(self, last: float) -> float:
        now = asyncio.get_running_loop().time()
        # strictly after the previous message: timers due at the same time run in any order
        return max(last + 1e-6, now + self.rng.uniform(0, self.max_delay))

    async def _pump_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in self._requests:
                if self.broken:
                    return
                self._up_at = self._deliver_at(self._up_at)
                handle = loop.call_at(self._up_at, self._up.put_nowait, request)
                self._in_flight.append(handle)
        except (LinkBroken, asyncio.CancelledError):
            return
        # the client closed its side (a half-close): the server sees the end of requests
        loop.call_at(self._deliver_at(self._up_at), self._up.put_nowait, None)

    async def _server_requests(self) -> AsyncIterator[pb.ConnectRequest]:
        while True:
            request = await self._up.get()
            if request is None:
                return
            self.on_delivered(request)
            yield request

    async def _pump_down(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for response in self._handler:
                if self.broken:
                    return
                if self.serializer is not None:  # the bytes the stream takes now, read back
                    response = pb.ConnectResponse.FromString(self.serializer(response))
                self._down_at = self._deliver_at(self._down_at)
                loop.call_at(self._down_at, self._give, response)
        except Aborted as err:
            loop.call_at(self._deliver_at(self._down_at), self._give, LinkBroken(str(err)))
            return
        except asyncio.CancelledError:
            return
        finally:
            # gRPC ends a handler whose stream is gone, also one waiting at a ``yield``
            # (left there, it would keep the agent's stream in the hub for ever)
            with contextlib.suppress(BaseException):
                await self._handler.aclose()  # type: ignore[attr-defined]
        loop.call_at(self._deliver_at(self._down_at), self._give, LinkBroken("stream ended by the server"))

    def _give(self, item: pb.ConnectResponse | BaseException) -> None:
        if not self.broken:
            self._down.put_nowait(item)

    async def responses(self) -> AsyncIterator[pb.ConnectResponse]:
        """What the server sends; raises LinkBroken when the stream ends."""
        while True:
            item = await self._down.get()
            if isinstance(item, BaseException):
                self.break_(reason=str(item))
                raise item
            if item is None or self.broken:
                raise LinkBroken("stream broken")
            yield item

    def break_(self, reason: str = "broken", *, drop_all: bool = False) -> None:
        """End the stream now: requests still on their way may or may not arrive
        (none do when ``drop_all``: the server is gone)."""
        if self.broken:
            return
        self.broken = True
        for handle in self._in_flight:
            if drop_all or self.rng.random() < 0.5:
                handle.cancel()
        self._in_flight.clear()
        loop = asyncio.get_running_loop()
        if drop_all:
            self._cancel_handler()
        else:  # the server notices after whatever reached it (the end of its request stream)
            loop.call_at(self._deliver_at(self._up_at), self._up.put_nowait, None)
            loop.call_at(self._deliver_at(self._up_at) + 0.001, self._cancel_handler)
        self._down.put_nowait(None)

    def _cancel_handler(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().create_task(self._close_requests())

    async def _close_requests(self) -> None:
        with contextlib.suppress(BaseException):
            await self._requests.aclose()  # type: ignore[attr-defined]
