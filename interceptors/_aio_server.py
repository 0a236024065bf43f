"""asyncio server interceptor: the same mapping as the sync one, awaiting the servicer."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from mission_control.client.executor import inherit_deadline, restore_deadline

from ._common import ErrorMapper
from ._server import rewrap


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """asyncio counterpart of :class:`~._server.ServerInterceptor`."""

    def __init__(self, agent: str | None = None, debug: bool | None = None) -> None:
        self._mapper = ErrorMapper(agent, debug)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        return rewrap(handler, lambda b, _streams: self._wrap(b, method))

    def _wrap(self, behavior: Any, method: str) -> Any:
        mapper = self._mapper

        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # each call runs in a task of its own: the deadline stays with it
                inherit_deadline(context.time_remaining())
                try:
                    async for item in behavior(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await context.abort_with_status(mapper.status_for(exc, method))  # type: ignore[attr-defined]

            return streaming

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = inherit_deadline(context.time_remaining())
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await context.abort_with_status(mapper.status_for(exc, method))  # type: ignore[attr-defined]
            finally:
                restore_deadline(token)

        return call
