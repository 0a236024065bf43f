"""What the sync and asyncio client interceptors share: naming the service of a call,
per-attempt call details, and the fallback stubs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pool, message_factory
from mission_control.client.agent import MissionControl

from ._common import split_method

ServiceMap = Mapping[str, str] | Callable[[str], str] | None
#: Which endpoint of its service a call goes to: "method" (the method's name),
#: "metadata:KEY" (the value of the call's metadata KEY), or a function of
#: (method, metadata) returning a name or None (no endpoint: the service's own breaker).
EndpointOf = str | Callable[[str, Any], str | None] | None


class CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _Details(CallDetails, grpc.ClientCallDetails):
    pass


class _AioDetails(CallDetails, grpc.aio.ClientCallDetails):  # type: ignore[misc]
    pass


def with_timeout(details: Any, timeout: float, aio: bool = False) -> Any:
    """The call's details with ``timeout`` (the time left under the policy)."""
    cls = _AioDetails if aio else _Details
    return cls(
        details.method,
        timeout,
        details.metadata,
        details.credentials,
        details.wait_for_ready,
        getattr(details, "compression", None),
    )


class ServiceNamer:
    """Which service (policy, breaker) a call belongs to.

    ``services`` maps a full method (``/pkg.Svc/Method``) or a gRPC service
    (``pkg.Svc``) to a service name, or is a function of the method; calls it does not
    name belong to ``service``, or else to their gRPC service name.
    """

    def __init__(self, service: str | None, services: ServiceMap, endpoint: EndpointOf = None) -> None:
        self.service = service
        self.services = services
        self.endpoint = endpoint
        if isinstance(endpoint, str) and endpoint != "method" and not endpoint.startswith("metadata:"):
            raise ValueError(f'endpoint must be "method", "metadata:KEY" or a function, not {endpoint!r}')
        self._cache: dict[str, str] = {}

    def target(self, executor: Any, method: str, metadata: Any) -> str:
        """The breaker name the call goes by: its service's, or its endpoint's
        (``service/endpoint``, see :meth:`Executor.target`)."""
        service = self(method)
        endpoint = self.endpoint
        if endpoint is None:
            return service
        if endpoint == "method":
            found: str | None = split_method(method)[1] or None
        elif isinstance(endpoint, str):
            key = endpoint.removeprefix("metadata:").lower()
            found = next((str(v) for k, v in (metadata or ()) if k == key), None)
        else:
            found = endpoint(method, metadata)
        return service if found is None else executor.target(service, found)  # type: ignore[no-any-return]

    def __call__(self, method: str) -> str:
        found = self._cache.get(method)
        if found is None:
            found = self._resolve(method)
            self._cache[method] = found
        return found

    def _resolve(self, method: str) -> str:
        grpc_service, _ = split_method(method)
        if callable(self.services):
            return self.services(method)
        if self.services:
            for key in (method, grpc_service):
                if key in self.services:
                    return self.services[key]
        return self.service or grpc_service


def response_class(method: str) -> Any:
    """The generated response class of ``/pkg.Svc/Method``, from the descriptor pool."""
    grpc_service, name = split_method(method)
    pool = descriptor_pool.Default()
    output = pool.FindServiceByName(grpc_service).FindMethodByName(name).output_type
    return message_factory.GetMessageClass(output)


def operation_of(method: str) -> str:
    return split_method(method)[1] or method


def check_mc(mc: object) -> MissionControl:
    if not isinstance(mc, MissionControl):
        raise TypeError(f"pass the agent's MissionControl instance, not {type(mc).__name__}")
    return mc
