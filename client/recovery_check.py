"""A service's recovery check: how the control plane learns that an OPEN breaker's service
serves again without sending it a real call (Envoy's active health checking beside its
outlier detection).

While a breaker is OPEN the leading control plane asks ``target`` every ``interval_secs``:
``grpc.health.v1.Health/Check`` for a ``host:port`` (about ``health_service``), or an HTTP
GET for an ``http://`` / ``https://`` URL (LLM providers speak HTTP; any 2xx is SERVING).
An answer not back within ``timeout_secs`` is not healthy. The value lives here, apart
from :mod:`.policy`, which holds it as ``ServicePolicy.recovery_check``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = ["MAX_ENDPOINT_LENGTH", "MAX_HEALTH_SERVICE", "MIN_INTERVAL_SECS", "RecoveryCheck"]

#: The shortest time between checks: one target is never asked more than 50 times a second.
MIN_INTERVAL_SECS = 0.02
_LONGEST = 3600.0
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,253}):[0-9]{1,5}")
#: Printable ASCII only: the target is shown in breaker reasons, which hold no control characters.
_URL = re.compile(r"https?://[!-~]{1,2040}")
#: Names gRPC reads as a resolver scheme in ``name:rest`` (``unix:1234`` is a local socket
#: named 1234, not host "unix" port 1234): never a host a check may name.
_GRPC_SCHEMES = frozenset(
    {
        "dns",
        "ipv4",
        "ipv6",
        "unix",
        "unix-abstract",
        "vsock",
        "xds",
        "c2p",
        "google-c2p",
        "google-c2p-experimental",
    }
)
_HEALTH_SERVICE_CHARS = re.compile(r"[A-Za-z0-9_.\-/]*")
#: The longest name a check asks about, once each :data:`ENDPOINT` is replaced.
MAX_HEALTH_SERVICE = 200
#: The longest endpoint name (``service/endpoint``'s part after the service).
MAX_ENDPOINT_LENGTH = 128


def target_problem(target: object) -> str | None:
    """Why ``target`` is not a check target (``host:port`` or an http(s) URL), else None."""
    if not isinstance(target, str) or not target:
        return "is required: a gRPC address host:port, or an http:// or https:// URL"
    if target.startswith(("http://", "https://")):
        if _URL.fullmatch(target):
            return None
        return "not a URL of at most 2048 printable ASCII characters (no spaces or control characters)"
    found = _HOST_PORT.fullmatch(target)
    if found is None or not 0 < int(target.rsplit(":", 1)[1]) < 65536:
        return "must be host:port (a port from 1 to 65535), or an http:// or https:// URL"
    if found.group(1).lower() in _GRPC_SCHEMES:
        return f"{found.group(1)!r} is a gRPC address scheme (a local socket or resolver), not a host"
    return None


def _number_problem(value: Any, low: float, high: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not math.isfinite(value):
        return "must be a finite number"
    if value < low:
        return f"must be >= {low:g}"
    if value > high:
        return f"must be <= {high:g}"
    return None


#: In a check's ``health_service``: the endpoint of the breaker checked.
ENDPOINT = "{endpoint}"


def asked_about(health_service: str, breaker: str) -> str:
    """The health service a check asks about for ``breaker`` (``service`` or
    ``service/endpoint``): :data:`ENDPOINT` replaced by its endpoint."""
    if ENDPOINT not in health_service:
        return health_service
    return health_service.replace(ENDPOINT, breaker.partition("/")[2])


def health_service_problem(health_service: object) -> str | None:
    """Why ``health_service`` is not one (its longest form, each :data:`ENDPOINT` replaced
    by an endpoint name of :data:`MAX_ENDPOINT_LENGTH`, is at most
    :data:`MAX_HEALTH_SERVICE` characters: every check asks a valid name), else None."""
    if not isinstance(health_service, str):
        return "must be a string"
    rest = health_service.replace(ENDPOINT, "")
    if not _HEALTH_SERVICE_CHARS.fullmatch(rest):
        return f"only letters, digits, '_', '.', '-', '/' and {ENDPOINT!r}"
    placeholders = health_service.count(ENDPOINT)
    longest = len(rest) + placeholders * MAX_ENDPOINT_LENGTH
    if longest > MAX_HEALTH_SERVICE and not placeholders:
        return f"at most {MAX_HEALTH_SERVICE} characters (here {longest})"
    if longest > MAX_HEALTH_SERVICE:
        return (
            f"at most {MAX_HEALTH_SERVICE} characters once each {ENDPOINT!r} is replaced by an "
            f"endpoint name (up to {MAX_ENDPOINT_LENGTH}): here up to {longest} "
            f"(with one {ENDPOINT!r}, at most {MAX_HEALTH_SERVICE - MAX_ENDPOINT_LENGTH} others)"
        )
    return None


@dataclass(frozen=True, slots=True)
class RecoveryCheck:
    """Ask ``target`` whether the service serves again while its breaker is OPEN.

    Raises:
        ConfigurationError: naming every bad field.
    """

    target: str
    #: gRPC only: the service name asked about ("" = the server as a whole); each
    #: :data:`ENDPOINT` in it is replaced by the endpoint of the breaker checked ("" for
    #: the service's own), so each endpoint breaker asks about its own endpoint. At most
    #: :data:`MAX_HEALTH_SERVICE` characters with each replaced by the longest endpoint.
    health_service: str = ""
    interval_secs: float = 0.25
    timeout_secs: float = 1.0

    def __post_init__(self) -> None:
        found = self.problems()
        if found:
            raise ConfigurationError.from_violations(found)

    @property
    def is_http(self) -> bool:
        return self.target.startswith(("http://", "https://"))

    def problems(self) -> list[tuple[str, str]]:
        """Every bad field with why, as (field, message)."""
        found = []
        problem = target_problem(self.target)
        if problem:
            found.append(("target", problem))
        problem = health_service_problem(self.health_service)
        if problem:
            found.append(("health_service", problem))
        elif self.health_service and isinstance(self.target, str) and self.target.startswith("http"):
            found.append(("health_service", "only for a gRPC target (an HTTP check asks its URL)"))
        problem = _number_problem(self.interval_secs, MIN_INTERVAL_SECS, _LONGEST)
        if problem:
            found.append(("interval_secs", problem))
        problem = _number_problem(self.timeout_secs, 0.001, 60.0)
        if problem:
            found.append(("timeout_secs", problem))
        return found
