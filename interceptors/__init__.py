"""gRPC adapters over the resilience client.

Server side: :func:`server_interceptor` / :func:`aio_server_interceptor` make a
:class:`~mission_control.client.errors.MissionControlError` raised in a servicer leave as
its rich ``google.rpc.Status``; any other exception leaves as ``AgentCriticalFailure``.
"""

from __future__ import annotations

from ._aio_server import AioServerInterceptor
from ._server import ServerInterceptor

__all__ = ["aio_server_interceptor", "server_interceptor"]


def server_interceptor(*, agent: str | None = None, debug: bool | None = None) -> ServerInterceptor:
    """Interceptor for ``grpc.server(interceptors=[...])``.

    Args:
        agent: the name reported in ``AgentCriticalFailure.agent`` (default: the gRPC
            service name of the failing method).
        debug: send stack traces and exception texts to callers. Default: the
            ``MISSION_CONTROL_DEBUG_ERRORS`` environment variable, else off.
    """
    return ServerInterceptor(agent=agent, debug=debug)


def aio_server_interceptor(
    *, agent: str | None = None, debug: bool | None = None
) -> AioServerInterceptor:
    """Interceptor for ``grpc.aio.server(interceptors=[...])``; arguments as
    :func:`server_interceptor`."""
    return AioServerInterceptor(agent=agent, debug=debug)
