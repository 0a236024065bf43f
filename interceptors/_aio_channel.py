"""A protected ``grpc.aio`` channel without grpc's interceptor machinery.

Its multi-callables decide each call as the aio interceptors do and call the underlying
channel's multi-callables directly. A unary call runs its plan in one task and answers
through grpc's own intercepted-call class (so ``code()``, ``details()``, metadata,
callbacks and cancellation behave exactly as behind the interceptors); an admitted stream
is grpc's call itself; a refused one answers as grpc's intercepted call whose interceptor
raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from grpc.aio import _base_call
from grpc.aio._interceptor import (
    InterceptedCall,
    _InterceptedStreamRequestMixin,
    _InterceptedStreamResponseMixin,
    _InterceptedUnaryResponseMixin,
)

from ._aio_client import record_when_done
from ._aio_unary import Run, UnaryUnaryCall
from ._route import Protection, Route


class _RefusedUnaryStream(_InterceptedStreamResponseMixin, InterceptedCall, _base_call.UnaryStreamCall):  # type: ignore[misc]
    def __init__(self, failed: asyncio.Future[Any]) -> None:
        self._init_stream_response_mixin()
        super().__init__(failed)  # type: ignore[arg-type]


class _RefusedStreamUnary(  # type: ignore[misc]
    _InterceptedUnaryResponseMixin,
    _InterceptedStreamRequestMixin,
    InterceptedCall,
    _base_call.StreamUnaryCall,
):
    def __init__(self, failed: asyncio.Future[Any], requests: Any) -> None:
        self._loop = failed.get_loop()
        self._init_stream_request_mixin(requests)
        super().__init__(failed)  # type: ignore[arg-type]


class _RefusedStreamStream(  # type: ignore[misc]
    _InterceptedStreamResponseMixin,
    _InterceptedStreamRequestMixin,
    InterceptedCall,
    _base_call.StreamStreamCall,
):
    def __init__(self, failed: asyncio.Future[Any], requests: Any) -> None:
        self._loop = failed.get_loop()
        self._init_stream_response_mixin()
        self._init_stream_request_mixin(requests)
        super().__init__(failed)  # type: ignore[arg-type]


def _failed(error: BaseException) -> asyncio.Future[Any]:
    failed = asyncio.get_running_loop().create_future()
    failed.set_exception(error)
    failed.exception()  # the caller may never look: not "never retrieved" for that
    return failed


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    def __init__(self, inner: Any, route: Route) -> None:
        self._inner = inner
        self._route = route

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        outcome = asyncio.get_running_loop().create_future()
        run = Run(
            self._route, self._inner, request, metadata, credentials, wait_for_ready, compression, outcome
        )
        call = UnaryUnaryCall(outcome, run)
        run.start(timeout)
        return call


class _Stream:
    """What the three streaming kinds share: admission, then grpc's call itself."""

    def __init__(self, inner: Any, route: Route, pending: set[asyncio.Task[None]]) -> None:
        self._inner = inner
        self._route = route
        self._pending = pending

    def _start(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        route = self._route
        ex = route.ex
        try:
            service = route.target(metadata) if route.targeted else route.service
            ticket = ex.admit(service, route.operation, kind=route.kind, timeout=timeout, cost=None)
        except Exception as error:
            return self._refused(_failed(error), request)
        try:
            call = self._inner(
                request,
                timeout=ticket.timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except BaseException:
            ex.release(ticket)
            ex.abandon(ticket)
            raise
        record_when_done(ex, ticket, route.outcomes, call, self._pending)
        return call

    def _refused(self, failed: asyncio.Future[Any], request: Any) -> Any:
        raise NotImplementedError

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(request, timeout, metadata, credentials, wait_for_ready, compression)


class _UnaryStream(_Stream, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    def _refused(self, failed: asyncio.Future[Any], request: Any) -> Any:
        return _RefusedUnaryStream(failed)


class _StreamUnary(_Stream, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    def _refused(self, failed: asyncio.Future[Any], request: Any) -> Any:
        return _RefusedStreamUnary(failed, request)


class _StreamStream(_Stream, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    def _refused(self, failed: asyncio.Future[Any], request: Any) -> Any:
        return _RefusedStreamStream(failed, request)


class AioProtectedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """``channel`` whose calls are protected; see :func:`aio_protected_channel`."""

    def __init__(self, channel: grpc.aio.Channel, protection: Protection) -> None:
        self._channel = channel
        self._protection = protection
        self._pending: set[asyncio.Task[None]] = set()  # streams' outcomes being recorded

    def _route(self, method: str | bytes) -> Route:
        return Route(self._protection, method.decode() if isinstance(method, bytes) else method)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryUnary(self._channel.unary_unary(method, *args, **kwargs), self._route(method))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_stream(method, *args, **kwargs)
        return _UnaryStream(inner, self._route(method), self._pending)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_unary(method, *args, **kwargs)
        return _StreamUnary(inner, self._route(method), self._pending)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_stream(method, *args, **kwargs)
        return _StreamStream(inner, self._route(method), self._pending)

    async def __aenter__(self) -> AioProtectedChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()
