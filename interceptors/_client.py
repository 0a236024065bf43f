"""Sync client interceptor: every unary call decided by the agent's executor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from mission_control.client.agent import MissionControl

from ._client_common import ServiceMap, ServiceNamer, operation_of, response_class, with_timeout


class ClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Breaker, rate limit, bulkhead, deadline, retry and fallback for unary calls;
    admission, deadline and outcome recording for server-streaming calls (a stream
    that has started is never retried)."""

    def __init__(
        self,
        agent: MissionControl,
        service: str | None = None,
        services: ServiceMap = None,
        kind: str | None = None,
        fallback_channels: Mapping[str, grpc.Channel] | None = None,
    ) -> None:
        self._executor = agent.executor
        self._service_of = ServiceNamer(service, services)
        self._kind = kind
        self._fallback_channels = dict(fallback_channels or {})

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method

        def attempt(left: float) -> Any:
            outcome = continuation(with_timeout(client_call_details, left), request)
            outcome.result()  # raises the call's RpcError
            return outcome

        return self._executor.run(
            self._service_of(method),
            attempt,
            operation=operation_of(method),
            kind=self._kind,
            timeout=client_call_details.timeout,
            fallbacks=self._fallbacks(client_call_details, request),
        )

    def _fallbacks(self, details: grpc.ClientCallDetails, request: Any) -> dict[str, Any] | None:
        if not self._fallback_channels:
            return None
        method = details.method

        def through(channel: grpc.Channel) -> Callable[[float], Any]:
            def attempt(left: float) -> Any:
                stub = channel.unary_unary(
                    method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response_class(method).FromString,
                )
                _, call = stub.with_call(request, timeout=left, metadata=details.metadata)
                return call

            return attempt

        return {name: through(ch) for name, ch in self._fallback_channels.items()}

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        ex = self._executor
        ticket = ex.admit(
            self._service_of(method),
            operation_of(method),
            kind=self._kind,
            timeout=client_call_details.timeout,
            cost=None,
        )
        try:
            stream = continuation(with_timeout(client_call_details, ticket.timeout), request)
        except BaseException:
            ex.release(ticket)
            ex.abandon(ticket)
            raise

        def done() -> None:
            ex.release(ticket)
            failed = stream.code() is not grpc.StatusCode.OK
            ex.record(ticket, ex.classify(ticket, stream) if failed else None)

        if not stream.add_callback(done):  # the stream has ended already: the callback will never run
            done()
        return stream
