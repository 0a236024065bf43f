"""asyncio client interceptors: the same decisions as the sync one, awaiting the call.

A unary call hands back the call object of the attempt that served it (so
``initial_metadata()``, ``trailing_metadata()`` and ``add_done_callback`` work as on an
un-intercepted call), or one that raises our error when awaited while its ``code()``,
``details()`` and metadata answer as the deciding attempt's; a streaming call is the call
itself, admitted and recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import grpc.aio
from mission_control.client.admission import Ticket
from mission_control.client.agent import MissionControl
from mission_control.client.executor import Executor
from mission_control.client.outcomes import Outcomes

from ._aio_failed import FailedCall
from ._client_common import EndpointOf, ServiceMap, ServiceNamer, operation_of, response_class, with_timeout

_Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Any]


class _Base:
    def __init__(
        self,
        mc: MissionControl,
        service: str | None = None,
        services: ServiceMap = None,
        kind: str | None = None,
        fallback_channels: Mapping[str, grpc.aio.Channel] | None = None,
        idempotent: bool = False,
        outcomes: Outcomes | None = None,
        endpoint: EndpointOf = None,
    ) -> None:
        self._executor = mc.executor
        self._service_of = ServiceNamer(service, services, endpoint)
        self._kind = kind
        self._fallback_channels = dict(fallback_channels or {})
        self._idempotent = idempotent
        self._outcomes = outcomes
        self._pending: set[asyncio.Task[None]] = set()

    async def _stream(self, continuation: _Continuation, details: Any, request: Any) -> Any:
        """One attempt: admitted, given the deadline, its outcome recorded when it ends
        (a stream is never retried: once it has sent or received anything it may have
        taken effect)."""
        method = _method(details)
        ex = self._executor
        service = self._service_of.target(ex, method, details.metadata)
        ticket = ex.admit(service, operation_of(method), kind=self._kind, timeout=details.timeout, cost=None)
        try:
            call = await continuation(with_timeout(details, ticket.timeout, aio=True), request)
        except BaseException:
            ex.release(ticket)
            ex.abandon(ticket)
            raise
        record_when_done(ex, ticket, self._outcomes, call, self._pending)
        return call


def record_when_done(
    ex: Executor, ticket: Ticket, outcomes: Outcomes | None, call: Any, pending: set[asyncio.Task[None]]
) -> None:
    """When the stream ``call`` ends, its place comes back and its outcome is recorded
    (in a task kept in ``pending`` until it is done)."""

    def done(ended: Any) -> None:  # the call comes as the argument: no reference kept here
        ex.release(ticket)
        task = asyncio.get_running_loop().create_task(_record(ex, ticket, outcomes, ended))
        pending.add(task)
        task.add_done_callback(pending.discard)

    call.add_done_callback(done)


async def _record(ex: Executor, ticket: Ticket, outcomes: Outcomes | None, call: Any) -> None:
    """A stream's outcome; cancelled (by the caller, or by grpc when the caller's request
    iterator raised) counts as neither and hands a probe permit back."""
    try:
        if call.cancelled():
            ex.abandon(ticket)
            return
        code = await call.code()
        failure = None
        if code is not grpc.StatusCode.OK:
            initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
            error = grpc.aio.AioRpcError(code, initial, trailing, await call.details(), "")
            failure = ex.classify(ticket, error, outcomes)
    except Exception:
        ex.abandon(ticket)
        raise
    ex.record(ticket, failure)


async def decided(run: Awaitable[Any]) -> Any:
    """The call that served a unary call, or one that raises the error it ended in."""
    try:
        return await run
    except grpc.aio.AioRpcError:
        raise  # grpc's call answers for it as without us
    except Exception as error:  # awaiting raises it; code(), details(), … answer
        return FailedCall(error)


def fallback_attempts(
    channels: Mapping[str, grpc.aio.Channel], method: str, request: Any, metadata: Any
) -> dict[str, Any] | None:
    """An attempt per fallback channel (None: there are none)."""
    if not channels:
        return None

    def through(channel: grpc.aio.Channel) -> Callable[[float], Any]:
        async def attempt(left: float) -> Any:
            stub = channel.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_class(method).FromString,
            )
            call = stub(request, timeout=left, metadata=metadata)
            await call
            return call

        return attempt

    return {name: through(ch) for name, ch in channels.items()}


def _method(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method  # type: ignore[no-any-return]


class AioUnaryUnaryInterceptor(_Base, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: _Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = _method(client_call_details)

        async def attempt(left: float) -> Any:
            call = await continuation(with_timeout(client_call_details, left, aio=True), request)
            await call  # raises the call's AioRpcError
            return call

        return await decided(
            self._executor.run_async(
                self._service_of.target(self._executor, method, client_call_details.metadata),
                attempt,
                operation=operation_of(method),
                kind=self._kind,
                timeout=client_call_details.timeout,
                fallbacks=fallback_attempts(
                    self._fallback_channels, method, request, client_call_details.metadata
                ),
                idempotent=self._idempotent,
                outcomes=self._outcomes,
            )
        )


class AioUnaryStreamInterceptor(_Base, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: _Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._stream(continuation, client_call_details, request)


class AioStreamUnaryInterceptor(_Base, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: _Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator)


class AioStreamStreamInterceptor(_Base, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: _Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._stream(continuation, client_call_details, request_iterator)
