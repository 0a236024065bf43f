"""asyncio client interceptors: the same decisions as the sync one, awaiting the call.

A unary call hands back the call object of the attempt that served it (so
``initial_metadata()``, ``trailing_metadata()`` and ``add_done_callback`` work as on an
un-intercepted call), or one that raises our error when awaited while its ``code()``,
``details()`` and metadata answer as the deciding attempt's; a streaming call is the call
itself, admitted and recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio
from mission_control.client.admission import Ticket
from mission_control.client.agent import MissionControl
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

        def done(ended: Any) -> None:  # the call comes as the argument: no reference kept here
            ex.release(ticket)
            task = asyncio.get_running_loop().create_task(self._record(ticket, ended))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        call.add_done_callback(done)
        return call

    async def _record(self, ticket: Ticket, call: Any) -> None:
        """A stream's outcome; cancelled (by the caller, or by grpc when the caller's request
        iterator raised) counts as neither and hands a probe permit back."""
        ex = self._executor
        try:
            if call.cancelled():
                ex.abandon(ticket)
                return
            code = await call.code()
            failure = None
            if code is not grpc.StatusCode.OK:
                initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
                error = grpc.aio.AioRpcError(code, initial, trailing, await call.details(), "")
                failure = ex.classify(ticket, error, self._outcomes)
        except Exception:
            ex.abandon(ticket)
            raise
        ex.record(ticket, failure)


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

        try:
            return await self._executor.run_async(
                self._service_of.target(self._executor, method, client_call_details.metadata),
                attempt,
                operation=operation_of(method),
                kind=self._kind,
                timeout=client_call_details.timeout,
                fallbacks=self._fallbacks(method, client_call_details, request),
                idempotent=self._idempotent,
                outcomes=self._outcomes,
            )
        except grpc.aio.AioRpcError:
            raise  # grpc's call answers for it as without us
        except Exception as error:  # awaiting raises it; code(), details(), … answer
            return FailedCall(error)

    def _fallbacks(self, method: str, details: Any, request: Any) -> dict[str, Any] | None:
        if not self._fallback_channels:
            return None

        def through(channel: grpc.aio.Channel) -> Callable[[float], Any]:
            async def attempt(left: float) -> Any:
                stub = channel.unary_unary(
                    method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response_class(method).FromString,
                )
                call = stub(request, timeout=left, metadata=details.metadata)
                await call
                return call

            return attempt

        return {name: through(ch) for name, ch in self._fallback_channels.items()}


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
