"""Sync server interceptor: taxonomy exceptions leave as their rich status."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from mission_control.client.executor import inherit_deadline, restore_deadline

from ._common import ErrorMapper

_Behavior = Callable[[Any, grpc.ServicerContext], Any]


class ServerInterceptor(grpc.ServerInterceptor):
    """Turns a :class:`MissionControlError` raised by a servicer into its ``google.rpc.Status``,
    a plain gRPC error from a call it made into the same status, any other exception into
    ``AgentCriticalFailure`` (no stack trace unless debug). Calls the servicer makes get at
    most the time its caller has left."""

    def __init__(self, agent: str | None = None, debug: bool | None = None) -> None:
        self._mapper = ErrorMapper(agent, debug)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return rewrap(handler, lambda b, streams: self._wrap(b, method, streams))

    def _aborted(self, context: grpc.ServicerContext) -> bool:
        # context.abort() raises a bare Exception after recording the code: let it through.
        code = getattr(context, "code", None)
        return callable(code) and code() not in (None, grpc.StatusCode.OK)

    def _wrap(self, behavior: _Behavior, method: str, streams: bool) -> _Behavior:
        mapper = self._mapper

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            token = inherit_deadline(context.time_remaining())
            try:
                return behavior(request, context)
            except Exception as exc:
                if self._aborted(context):
                    raise
                context.abort_with_status(mapper.status_for(exc, method))
            finally:
                restore_deadline(token)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # A generator runs a step at a time on a pooled thread: each step runs in the
            # call's own context, so the caller's deadline never leaks to the next call.
            own = contextvars.copy_context()
            own.run(inherit_deadline, context.time_remaining())
            try:
                yield from _stepped(own, behavior(request, context))
            except Exception as exc:
                if self._aborted(context):
                    raise
                context.abort_with_status(mapper.status_for(exc, method))

        return streaming if streams else unary


def _stepped(own: contextvars.Context, items: Iterator[Any]) -> Iterator[Any]:
    while True:
        try:
            item = own.run(next, items)
        except StopIteration:
            return
        yield item


def rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Any, bool], Any]) -> grpc.RpcMethodHandler:
    """The same handler with its behavior passed through ``wrap(behavior, streams_out)``."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
    )
    for attr, make, streams in kinds:
        behavior = getattr(handler, attr)
        if behavior is not None:
            return make(
                wrap(behavior, streams),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
