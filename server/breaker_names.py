"""Which breaker names an operator may force: a typo must not make a new breaker.

A service's breaker is known when a policy names the service or the breaker was seen; an
endpoint breaker (``service/endpoint``) when its service has a policy and the breaker was
seen. Anything else needs ``--create`` (``create`` in ``SetBreakerStateRequest``) — and an
endpoint breaker a service with a policy, even then.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from mission_control.client.policy import service_of

CREATE_HINT = "use --create to make a new one"


def unknown_breaker(
    name: str,
    create: bool,
    has_policy: Callable[[str], bool],
    seen: Callable[[str], bool],
    known_names: Callable[[], Iterable[str]],
) -> str | None:
    """Why ``name`` (valid) may not be forced, or None."""
    service = service_of(name)
    if service != name and not has_policy(service):
        return (
            f"no breaker named {name!r}: endpoint breakers are those of a service with a policy, "
            f"and {service!r} has none"
        )
    if create or has_policy(name) or seen(name):
        return None
    close = difflib.get_close_matches(name, sorted(known_names()), n=5, cutoff=0.6)
    hint = f"; known names close to it: {', '.join(close)}" if close else ""
    return f"no breaker named {name!r}: no policy names it and it has never been seen{hint} ({CREATE_HINT})"
