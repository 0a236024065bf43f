"""A protected sync channel without grpc's interceptor machinery.

Each multi-callable of :class:`ProtectedChannel` decides its calls as the
:class:`~._client.ClientInterceptor` does and calls the underlying channel's multi-callable
directly: no call details, outcome wrappers or continuations per call, and what a method
needs (its service, operation, fallbacks) is worked out once, when the stub is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from grpc._interceptor import _FailureOutcome  # what grpc's future() hands back for a failure
from mission_control.client.agent import MissionControl
from mission_control.client.attempts import Attempt, CallPlan, Done
from mission_control.client.deadline import _deadline
from mission_control.client.outcomes import Outcomes

from ._client import StreamEnded, _watched, start_stream
from ._client_common import ServiceMap, ServiceNamer, operation_of, response_class
from ._future import unary_future


class Route:
    """What every call of one method shares: its service, operation and protection."""

    __slots__ = (
        "ex",
        "fallback_channels",
        "fallback_names",
        "idempotent",
        "kind",
        "method",
        "operation",
        "outcomes",
        "service",
    )

    def __init__(self, protection: Protection, method: str) -> None:
        self.ex = protection.ex
        self.method = method
        self.service = protection.service_of(method)
        self.operation = operation_of(method)
        self.kind = protection.kind
        self.fallback_channels = protection.fallback_channels
        self.fallback_names = tuple(protection.fallback_channels)
        self.idempotent = protection.idempotent
        self.outcomes = protection.outcomes

    def plan(self, timeout: float | None) -> CallPlan:
        """One unary call's plan (as :meth:`Executor.plan`, without its keyword handling)."""
        return CallPlan(
            self.ex,
            self.service,
            self.operation,
            self.kind,
            timeout,
            None,
            self.fallback_names,
            self.idempotent,
            self.outcomes,
            _deadline.get(),
        )

    def fallbacks(self, request: Any, metadata: Any, shape: bool | None) -> dict[str, Callable[[float], Any]]:
        """An attempt per fallback channel, in the shape the service's attempt has:
        ``(response, call)`` when ``shape`` is True, the response when False, the call
        when None (``.future()``)."""
        method = self.method

        def through(channel: Any) -> Callable[[float], Any]:
            def attempt(left: float) -> Any:
                stub = channel.unary_unary(
                    method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response_class(method).FromString,
                )
                response, call = stub.with_call(request, timeout=left, metadata=metadata)
                if shape is None:
                    return call
                return (response, call) if shape else response

            return attempt

        return {name: through(ch) for name, ch in self.fallback_channels.items()}

    def stream(self, request: Any, timeout: float | None, caller_errors: Any, start: Any) -> Any:
        return start_stream(
            self.ex,
            self.service,
            self.operation,
            self.kind,
            timeout,
            self.outcomes,
            request,
            caller_errors,
            start,
        )


class Protection:
    """The arguments of :func:`protected_channel`, checked once."""

    def __init__(
        self,
        mc: MissionControl,
        service: str | None,
        services: ServiceMap,
        kind: str | None,
        fallback_channels: Mapping[str, Any] | None,
        idempotent: bool,
        outcomes: Outcomes | None,
    ) -> None:
        self.ex = mc.executor
        self.service_of = ServiceNamer(service, services)
        self.kind = kind
        self.fallback_channels = dict(fallback_channels or {})
        self.idempotent = idempotent
        self.outcomes = outcomes


class _UnaryUnary(grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
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
        return self._blocking(
            self._inner, request, timeout, metadata, credentials, wait_for_ready, compression, False
        )

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._blocking(
            self._inner.with_call, request, timeout, metadata, credentials, wait_for_ready, compression, True
        )

    def _blocking(
        self,
        inner: Callable[..., Any],
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
        with_call: bool,
    ) -> Any:
        """A blocking call: the first attempt made here, the rest (if any) by the executor."""
        route = self._route

        def attempt(left: float) -> Any:
            return inner(
                request,
                timeout=left,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        plan = route.plan(timeout)
        try:
            step = plan.start()
            if type(step) is Attempt and step.target == route.service:
                token = _deadline.set(step.deadline)
                try:
                    result = attempt(step.left)
                except Exception as exc:
                    step = plan.failed(exc)
                else:
                    step = plan.succeeded(result)
                finally:
                    _deadline.reset(token)
                if type(step) is Done and step.error is None:
                    plan.close()
                    return step.result
        except BaseException:
            plan.close()
            raise
        functions: dict[str, Callable[[float], Any]] = {route.service: attempt}
        if route.fallback_names:
            functions.update(route.fallbacks(request, metadata, with_call))
        return route.ex.drive(plan, step, functions)

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

        def attempt(left: float) -> Any:
            outcome = start(left)
            outcome.result()  # raises the call's RpcError
            return outcome

        functions = {route.service: attempt, **route.fallbacks(request, metadata, None)}
        try:
            return unary_future(route.ex, route.plan(timeout), start, functions)
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
        inner = self._inner

        def start(requests: Any, left: float) -> Any:
            return inner(
                requests,
                timeout=left,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        return self._route.stream(request, timeout, None, start)


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
        ticket = ex.admit(route.service, route.operation, kind=route.kind, timeout=timeout, cost=None)
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
        inner = self._inner.future

        def start(requests: Any, left: float) -> Any:
            return inner(
                requests,
                timeout=left,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        try:
            return self._route.stream(request_iterator, timeout, [], start)
        except Exception as exc:
            return _FailureOutcome(exc, exc.__traceback__)  # type: ignore[arg-type]


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
        inner = self._inner

        def start(requests: Any, left: float) -> Any:
            return inner(
                requests,
                timeout=left,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        return self._route.stream(request_iterator, timeout, [], start)


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
