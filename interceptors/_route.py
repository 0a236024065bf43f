"""What every call of one method of a protected channel shares, worked out once when the
stub is made: its service, operation, fallbacks and the agent's executor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mission_control.client.admission import Refused, Ticket
from mission_control.client.agent import MissionControl
from mission_control.client.attempts import CallPlan
from mission_control.client.outcomes import Outcomes

from ._client import start_stream
from ._client_common import ServiceMap, ServiceNamer, operation_of, response_class


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

    def plan(self, timeout: float | None, parent_deadline: float | None) -> CallPlan:
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
            parent_deadline,
        )

    def admit(self, timeout: float | None, parent_deadline: float | None) -> Ticket | Refused:
        """The service's admission for a call's first attempt, as its plan would ask."""
        return self.ex.enter(self.service, self.operation, self.kind, timeout, None, parent_deadline)

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
