"""What every call of one method of a protected channel shares, worked out once when the
stub is made: its service, operation, fallbacks and the agent's executor.

Features a channel does not use cost its calls nothing: without ``endpoint`` a call goes
by the method's service, worked out here; with ``endpoint="method"`` the endpoint's name is
worked out here too (its breaker is looked up per call: endpoints are capped and idle ones
forgotten); only ``"metadata:KEY"`` or a function read each call's metadata. Hedging is a
policy's, which may change at any time, so it is looked up per call unless the channel has
fallbacks (a call with fallbacks is never hedged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mission_control.client.admission import Refused, Ticket
from mission_control.client.admit_fast import admit_fast
from mission_control.client.agent import MissionControl
from mission_control.client.attempts import CallPlan
from mission_control.client.hedging import HedgeRun
from mission_control.client.outcomes import Outcomes
from mission_control.client.policy import Hedging
from mission_control.client.view import ServiceState

from ._client import start_stream
from ._client_common import EndpointOf, ServiceMap, ServiceNamer, operation_of, response_class
from ._common import split_method


class Route:
    """What every call of one method shares: its service, operation and protection."""

    __slots__ = (
        "common",
        "endpoint",
        "ex",
        "fallback_channels",
        "fallback_names",
        "idempotent",
        "kind",
        "method",
        "namer",
        "operation",
        "outcomes",
        "per_call",
        "service",
        "state",
        "targeted",
    )

    def __init__(self, protection: Protection, method: str) -> None:
        self.ex = protection.ex
        self.method = method
        self.namer = namer = protection.service_of
        self.service = namer(method)
        #: the endpoint's name when the method alone says it (``endpoint="method"``)
        self.endpoint = (split_method(method)[1] or None) if namer.endpoint == "method" else None
        #: the endpoint comes from each call's metadata (``"metadata:KEY"`` or a function)
        self.per_call = namer.endpoint is not None and namer.endpoint != "method"
        #: calls go by an endpoint's breaker, not always by the service's
        self.targeted = self.per_call or self.endpoint is not None
        self.state: ServiceState | None = None  # the service's, once a call looked it up
        #: the service's state once a call was admitted by it (the executor started), when
        #: calls go by the service's breaker: their common case needs nothing more
        self.common: ServiceState | None = None
        self.operation = operation_of(method)
        self.kind = protection.kind
        self.fallback_channels = protection.fallback_channels
        self.fallback_names = tuple(protection.fallback_channels)
        self.idempotent = protection.idempotent
        self.outcomes = protection.outcomes

    def target(self, metadata: Any) -> str:
        """The breaker name a call goes by: the method's service, or its endpoint's (as
        :meth:`ServiceNamer.target`). Callers ask only when :attr:`targeted`."""
        if self.per_call:
            return self.namer.target(self.ex, self.method, metadata)  # type: ignore[no-any-return]
        return self.ex.target(self.service, self.endpoint)

    def hedging(self, service: str) -> Hedging | None:
        """The hedging of a call to ``service`` (None: it is not hedged), as the interceptors
        decide it; a channel with fallbacks never hedges."""
        if self.fallback_names:
            return None
        if service != self.service:  # an endpoint's breaker
            return self.ex.hedging_for(service, self.idempotent, None)
        policy = (self.state or self._state()).policy  # as Executor.hedging_for
        if policy.hedging is None or not (self.idempotent or policy.idempotent):
            return None
        return policy.hedging

    def _state(self) -> ServiceState:
        """The service's state, looked up once: it lives as long as the agent."""
        self.state = state = self.ex.view.get(self.service)
        return state

    def hedge_run(
        self, service: str, timeout: float | None, parent_deadline: float | None, hedging: Hedging
    ) -> HedgeRun:
        """The decisions of one hedged call to ``service`` (see ``client.hedging``)."""
        return HedgeRun(
            self.ex, service, self.operation, self.kind, timeout, None, self.outcomes, parent_deadline,
            hedging,
        )  # fmt: skip

    def plan(self, timeout: float | None, parent_deadline: float | None, service: str) -> CallPlan:
        """One unary call's plan (as :meth:`Executor.plan`, without its keyword handling)."""
        return CallPlan(
            self.ex,
            service,
            self.operation,
            self.kind,
            timeout,
            None,
            self.fallback_names,
            self.idempotent,
            self.outcomes,
            parent_deadline,
        )

    def admit(self, timeout: float | None, parent_deadline: float | None, service: str) -> Ticket | Refused:
        """``service``'s admission for a call's first attempt, as its plan would ask."""
        ex, operation, kind = self.ex, self.operation, self.kind
        if service is self.service and ex.not_started is None:  # the service's state is kept
            state = self.state or self._state()
            if not self.targeted:
                self.common = state
            now = ex.clock()
            ticket = admit_fast(ex, state, operation, kind, timeout, parent_deadline, now)
            if ticket is not None:
                return ticket
            return ex.enter_full(state, operation, kind, timeout, None, parent_deadline, True, now)
        return ex.enter(service, operation, kind, timeout, None, parent_deadline)

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

    def stream(
        self, request: Any, timeout: float | None, metadata: Any, caller_errors: Any, start: Any
    ) -> Any:
        return start_stream(
            self.ex,
            self.target(metadata) if self.targeted else self.service,
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
        endpoint: EndpointOf = None,
    ) -> None:
        self.ex = mc.executor
        self.service_of = ServiceNamer(service, services, endpoint)
        self.kind = kind
        self.fallback_channels = dict(fallback_channels or {})
        self.idempotent = idempotent
        self.outcomes = outcomes
