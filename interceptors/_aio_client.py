"""asyncio client interceptors: the same decisions as the sync one, awaiting the call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio
from mission_control.client.agent import MissionControl

from ._client_common import ServiceMap, ServiceNamer, operation_of, response_class, with_timeout


class _Base:
    def __init__(
        self,
        agent: MissionControl,
        service: str | None = None,
        services: ServiceMap = None,
        kind: str | None = None,
        fallback_channels: Mapping[str, grpc.aio.Channel] | None = None,
    ) -> None:
        self._executor = agent.executor
        self._service_of = ServiceNamer(service, services)
        self._kind = kind
        self._fallback_channels = dict(fallback_channels or {})


class AioUnaryUnaryInterceptor(_Base, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()

        async def attempt(left: float) -> Any:
            call = await continuation(with_timeout(client_call_details, left, aio=True), request)
            return await call

        return await self._executor.run_async(
            self._service_of(method),
            attempt,
            operation=operation_of(method),
            kind=self._kind,
            timeout=client_call_details.timeout,
            fallbacks=self._fallbacks(method, client_call_details, request),
        )

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
                return await stub(request, timeout=left, metadata=details.metadata)

            return attempt

        return {name: through(ch) for name, ch in self._fallback_channels.items()}


class AioUnaryStreamInterceptor(_Base, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        ex = self._executor
        ticket = ex.admit(
            self._service_of(method),
            operation_of(method),
            kind=self._kind,
            timeout=client_call_details.timeout,
            cost=None,
        )
        try:
            details = with_timeout(client_call_details, ticket.timeout, aio=True)
            stream = await continuation(details, request)
        except BaseException:
            ex.release(ticket)
            ex.abandon(ticket)
            raise
        pending: set[asyncio.Task[None]] = set()

        async def finish() -> None:
            code = await stream.code()
            failed = code is not grpc.StatusCode.OK
            failure = None
            if failed:
                error = grpc.aio.AioRpcError(
                    code,
                    await stream.initial_metadata(),
                    await stream.trailing_metadata(),
                    await stream.details(),
                    "",
                )
                failure = ex.classify(ticket, error)
            ex.record(ticket, failure)

        def done(_: Any) -> None:
            ex.release(ticket)
            task = asyncio.get_running_loop().create_task(finish())
            pending.add(task)
            task.add_done_callback(pending.discard)

        stream.add_done_callback(done)
        return stream
