"""A protected sync channel without grpc's interceptor machinery.

Each multi-callable of :class:`ProtectedChannel` decides its calls as the
:class:`~._client.ClientInterceptor` does and calls the underlying channel's multi-callable
directly: no call details, outcome wrappers or continuations per call, and what a method
needs (its service, operation, fallbacks) is worked out once, when the stub is made.

An idempotent unary call whose policy hedges is hedged as behind the interceptor (see
``client.hedging``), each attempt a call of grpc's own ``.future()``: a loser still running
when another wins is cancelled (it counts as neither). As behind the interceptor,
``.future()`` of a hedged call hands back the call once one has won. A blocking unary call
(``__call__``, ``with_call``) is ``._blocking``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc._interceptor import _FailureOutcome  # what grpc's future() hands back for a failure
from mission_control.client.deadline import _deadline
from mission_control.client.hedging import run_hedged

from ._blocking import blocking
from ._client import StreamEnded, _watched
from ._future import unary_future
from ._route import Protection, Route


class _UnaryUnary(grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    def __init__(self, inner: Any, route: Route) -> None:
        self._inner = inner
        self._route = route

    __call__ = blocking(with_call=False)
    with_call = blocking(with_call=True)

    def _starter(
        self,
        request: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Callable[[float], Any]:
        """How one attempt is sent with ``left`` seconds: grpc's future of it, not waited for."""
        inner = self._inner.future

        def start(left: float) -> Any:
            return inner(
                request,
                timeout=left,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        return start

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        route = self._route
        start = self._starter(request, metadata, credentials, wait_for_ready, compression)

        def attempt(left: float) -> Any:
            outcome = start(left)
            outcome.result()  # raises the call's RpcError
            return outcome

        try:
            parent = _deadline.get()
            service = route.target(metadata) if route.targeted else route.service
            hedging = route.hedging(service)
            if hedging is not None:
                run = route.hedge_run(service, timeout, parent, hedging)
                return run_hedged(run, start, _call)
            functions = {service: attempt, **route.fallbacks(request, metadata, None)}
            return unary_future(route.ex, route.plan(timeout, parent, service), start, functions)
        except Exception as exc:  # as grpc's intercepted future(): a failed future, not a raise
            return _FailureOutcome(exc, exc.__traceback__)  # type: ignore[arg-type]


class _UnaryStream(grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
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
        sender = _Sender(self._inner, metadata, credentials, wait_for_ready, compression)
        return _streamed(self._route, request, timeout, metadata, None, sender)


class _StreamUnary(grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    def __init__(self, inner: Any, route: Route) -> None:
        self._inner = inner
        self._route = route

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self.with_call(request_iterator, timeout, metadata, credentials, wait_for_ready, compression)[
            0
        ]

    def with_call(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        route, ex = self._route, self._route.ex
        service = route.target(metadata) if route.targeted else route.service
        ticket = ex.admit(service, route.operation, kind=route.kind, timeout=timeout, cost=None)
        errors: list[BaseException] = []
        try:
            response, call = self._inner.with_call(
                _watched(request_iterator, errors),
                timeout=ticket.timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.RpcError as exc:
            StreamEnded(ex, ticket, route.outcomes, exc, errors)()
            raise
        except BaseException:
            ex.release(ticket)
            ex.abandon(ticket)
            raise
        StreamEnded(ex, ticket, route.outcomes, call, errors)()
        return response, call

    def future(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        sender = _Sender(self._inner.future, metadata, credentials, wait_for_ready, compression)
        return _streamed(self._route, request_iterator, timeout, metadata, [], sender)


class _StreamStream(grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    def __init__(self, inner: Any, route: Route) -> None:
        self._inner = inner
        self._route = route

    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        sender = _Sender(self._inner, metadata, credentials, wait_for_ready, compression)
        return _streamed(self._route, request_iterator, timeout, metadata, [], sender)


class _Sender:
    """Sends one attempt of a streaming call with ``left`` seconds, the caller's other
    arguments as given."""

    __slots__ = ("_compression", "_credentials", "_inner", "_metadata", "_wait_for_ready")

    def __init__(
        self, inner: Any, metadata: Any, credentials: Any, wait_for_ready: bool | None, compression: Any
    ) -> None:
        self._inner = inner
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = wait_for_ready
        self._compression = compression

    def __call__(self, requests: Any, left: float) -> Any:
        return self._inner(
            requests,
            timeout=left,
            metadata=self._metadata,
            credentials=self._credentials,
            wait_for_ready=self._wait_for_ready,
            compression=self._compression,
        )


def _streamed(
    route: Route,
    requests: Any,
    timeout: float | None,
    metadata: Any,
    caller_errors: list[BaseException] | None,
    sender: _Sender,
) -> Any:
    """A streaming call through ``route``; a refusal is handed back as grpc's interceptor
    would: a failed outcome, raised when iterated or waited for, not raised here."""
    try:
        return route.stream(requests, timeout, metadata, caller_errors, sender)
    except Exception as exc:
        return _FailureOutcome(exc, exc.__traceback__)  # type: ignore[arg-type]


def _call(future: Any) -> Any:
    return future


class ProtectedChannel(grpc.Channel):  # type: ignore[misc]
    """``channel`` whose calls are protected; see :func:`protected_channel`."""

    def __init__(self, channel: grpc.Channel, protection: Protection) -> None:
        self._channel = channel
        self._protection = protection

    def _route(self, method: str | bytes) -> Route:
        name = method.decode() if isinstance(method, bytes) else method
        return Route(self._protection, name)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryUnary(self._channel.unary_unary(method, *args, **kwargs), self._route(method))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryStream(self._channel.unary_stream(method, *args, **kwargs), self._route(method))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _StreamUnary(self._channel.stream_unary(method, *args, **kwargs), self._route(method))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _StreamStream(self._channel.stream_stream(method, *args, **kwargs), self._route(method))

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ProtectedChannel:
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._channel.close()
