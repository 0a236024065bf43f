"""gRPC adapters over the resilience client.

Client side: :func:`client_interceptor` / :func:`protected_channel` (sync) and
:func:`aio_client_interceptors` / :func:`aio_protected_channel` (asyncio) decide every call,
of every kind, from the agent's local view — breaker, rate limit, bulkhead, deadline, and
for unary calls retry and fallback — and raise the taxonomy's errors.

Server side: :func:`server_interceptor` / :func:`aio_server_interceptor` make a
:class:`~mission_control.client.errors.MissionControlError` raised in a servicer leave as
its rich ``google.rpc.Status``, a plain gRPC error from a call it made as that status, and
any other exception as ``AgentCriticalFailure``; calls the servicer makes get at most the
time its caller has left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
from mission_control.client.agent import MissionControl
from mission_control.client.outcomes import Outcomes

from ._aio_channel import AioProtectedChannel
from ._aio_client import (
    AioStreamStreamInterceptor,
    AioStreamUnaryInterceptor,
    AioUnaryStreamInterceptor,
    AioUnaryUnaryInterceptor,
)
from ._aio_server import AioServerInterceptor
from ._channel import ProtectedChannel
from ._client import ClientInterceptor
from ._client_common import EndpointOf, ServiceMap, check_mc
from ._route import Protection
from ._server import ServerInterceptor

__all__ = [
    "aio_client_interceptors",
    "aio_protected_channel",
    "aio_server_interceptor",
    "client_interceptor",
    "protected_channel",
    "server_interceptor",
]


def client_interceptor(
    mc: MissionControl,
    *,
    service: str | None = None,
    services: ServiceMap = None,
    kind: str | None = None,
    fallback_channels: Mapping[str, grpc.Channel] | None = None,
    idempotent: bool = False,
    outcomes: Outcomes | None = None,
    endpoint: EndpointOf = None,
) -> ClientInterceptor:
    """Interceptor for ``grpc.intercept_channel(channel, ...)``.

    Args:
        mc: the agent's :class:`MissionControl`.
        service: the service (policy and breaker) of every call on the channel.
        services: per method (``/pkg.Svc/Method``) or gRPC service (``pkg.Svc``) service
            names, or a function of the method; the rest go to ``service``, or to their
            gRPC service name.
        kind: ``"llm"``, ``"storage"`` or ``"other"``, to name plain failures
            (default: guessed from the service name).
        fallback_channels: service name -> a channel to the same API, tried in the
            policy's ``fallbacks`` order when the service cannot serve a unary call.
        idempotent: the methods may run twice (a late call may then be retried).
        outcomes: how errors count for the breaker (default: the agent's for the service).
        endpoint: gives each endpoint of the service a breaker of its own
            (``service/endpoint``, see ``MissionControl.guard``): ``"method"`` (the
            method's name), ``"metadata:KEY"`` (the call's metadata value for KEY) or a
            function ``(method, metadata) -> name | None``; None = the service's breaker.

    Unary calls are retried and fall back; streaming calls of every kind are admitted,
    bounded by the deadline and recorded, never retried. Raises from a call: the taxonomy
    error it failed with (``CircuitBreakerOpen``, ``ResourceExhausted``,
    ``OperationTimeout``, ``LLMProviderUnavailable``, …); an error the taxonomy cannot name
    leaves as the original ``grpc.RpcError``.
    """
    return ClientInterceptor(
        check_mc(mc), service, services, kind, fallback_channels, idempotent, outcomes, endpoint
    )


def protected_channel(
    channel: grpc.Channel,
    mc: MissionControl,
    *,
    service: str | None = None,
    services: ServiceMap = None,
    kind: str | None = None,
    fallback_channels: Mapping[str, grpc.Channel] | None = None,
    idempotent: bool = False,
    outcomes: Outcomes | None = None,
    endpoint: EndpointOf = None,
) -> grpc.Channel:
    """``channel`` with every call protected, as :func:`client_interceptor` protects it,
    but decided in its multi-callables, which call ``channel``'s directly: no
    ``grpc.intercept_channel`` machinery per call. When the agent's telemetry is on,
    OpenTelemetry's client interceptor goes around it (so each call's span is the one our
    attributes and retry/fallback events go on). Arguments as :func:`client_interceptor`."""
    protection = Protection(
        check_mc(mc), service, services, kind, fallback_channels, idempotent, outcomes, endpoint
    )
    protected = ProtectedChannel(channel, protection)
    if mc.telemetry is None:
        return protected
    from opentelemetry.instrumentation.grpc import grpcext

    return grpcext.intercept_channel(protected, mc.telemetry.grpc_client_interceptor())  # type: ignore[no-any-return]


def aio_client_interceptors(
    mc: MissionControl,
    *,
    service: str | None = None,
    services: ServiceMap = None,
    kind: str | None = None,
    fallback_channels: Mapping[str, grpc.aio.Channel] | None = None,
    idempotent: bool = False,
    outcomes: Outcomes | None = None,
    endpoint: EndpointOf = None,
) -> list[Any]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``; arguments as
    :func:`client_interceptor`. With the agent's telemetry on, OpenTelemetry's client
    interceptors come first, so each call's span carries our attributes and events."""
    check_mc(mc)
    args = (mc, service, services, kind, fallback_channels, idempotent, outcomes, endpoint)
    ours: list[Any] = [
        AioUnaryUnaryInterceptor(*args),
        AioUnaryStreamInterceptor(*args),
        AioStreamUnaryInterceptor(*args),
        AioStreamStreamInterceptor(*args),
    ]
    if mc.telemetry is None:
        return ours
    return [*mc.telemetry.grpc_aio_client_interceptors(), *ours]


def aio_protected_channel(
    target: str | grpc.aio.Channel,
    mc: MissionControl,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Any = None,
    **protection: Any,
) -> grpc.aio.Channel:
    """The asyncio twin of :func:`protected_channel`: ``target``, a ``grpc.aio`` channel or
    an address to open one to (secure when ``credentials`` are given), with every call
    protected in its multi-callables, as :func:`aio_client_interceptors` protect it;
    ``protection`` as their arguments.

    With the agent's telemetry on, an address gets a channel with
    :func:`aio_client_interceptors` instead (OpenTelemetry's span must be around our
    decision, and an aio channel takes its interceptors when made)."""
    if isinstance(target, str):
        if mc.telemetry is not None:
            interceptors: Any = aio_client_interceptors(mc, **protection)
        else:
            interceptors = None
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        else:
            channel = grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
        if interceptors is not None:
            return channel
    else:
        channel = target
    return AioProtectedChannel(channel, _protection(mc, **protection))


def _protection(
    mc: MissionControl,
    *,
    service: str | None = None,
    services: ServiceMap = None,
    kind: str | None = None,
    fallback_channels: Mapping[str, Any] | None = None,
    idempotent: bool = False,
    outcomes: Outcomes | None = None,
    endpoint: EndpointOf = None,
) -> Protection:
    return Protection(
        check_mc(mc), service, services, kind, fallback_channels, idempotent, outcomes, endpoint
    )


def server_interceptor(*, agent: str | None = None, debug: bool | None = None) -> ServerInterceptor:
    """Interceptor for ``grpc.server(interceptors=[...])``.

    Args:
        agent: the name reported in ``AgentCriticalFailure.agent`` (default: the gRPC
            service name of the failing method).
        debug: send stack traces and exception texts to callers. Default: the
            ``MISSION_CONTROL_DEBUG_ERRORS`` environment variable, else off.
    """
    return ServerInterceptor(agent=agent, debug=debug)


def aio_server_interceptor(*, agent: str | None = None, debug: bool | None = None) -> AioServerInterceptor:
    """Interceptor for ``grpc.aio.server(interceptors=[...])``; arguments as
    :func:`server_interceptor`."""
    return AioServerInterceptor(agent=agent, debug=debug)
