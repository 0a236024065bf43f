"""The demo's recovery checks: its upstreams serve ``grpc.health.v1`` honestly, and its
policies name a recovery check for each upstream with a breaker (see the README's "The
recovery check").

Honest means the health answer follows the upstream's own script, as its calls do: a
server that is down answers no check (UNAVAILABLE, as its calls); a slow one answers as
slowly as its calls (so a check with a timeout below that delay times out); one failing
every other call still says SERVING — real health endpoints often do, and the
recovery check must not make a breaker flap on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.resilience.v1 import policy_pb2

#: service -> (its upstream, the check's timeout): no longer than the service's call timeout,
#: so a check of an upstream too slow for its calls is not healthy either. Storage's is half
#: its call timeout: while storage answers slowly, checks in flight wait for it, up to three
#: at once (a slow one does not hold the next back).
CHECKED = {"llm_provider": ("llm-primary", 1.0), "storage_backend": ("storage", 0.15)}
#: Every call kept off a recovered upstream until a check sees it is a false positive: at
#: the demo's ~75 LLM calls a second, each 0.02 s of delay is ~1.5 of them. Its upstreams
#: are local, so checking this often (the shortest interval a policy may set; the default
#: is 0.25 s) costs them little: 50 health answers a second while OPEN (a slow one waits
#: for at most three at once).
INTERVAL_SECS = 0.02


class HonestHealth(health_pb2_grpc.HealthServicer):
    """``Health/Check`` answered as the upstream's calls are in its current mode."""

    def __init__(self, mode_now: Callable[[], str]) -> None:
        self._mode_now = mode_now

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> object:
        mode = self._mode_now()
        if mode == "fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        if mode.startswith("slow"):
            time.sleep(float(mode.split(":")[1]))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def serve_health(server: grpc.Server, mode_now: Callable[[], str]) -> None:
    """Add the honest health service to an upstream's server (before it starts)."""
    health_pb2_grpc.add_HealthServicer_to_server(HonestHealth(mode_now), server)  # type: ignore[no-untyped-call]


def checks_note() -> str:
    """The demo's recovery checks in a few words, for the line under its KPI table."""
    shown = ", ".join(
        f"{service} asks {upstream} (timeout {t:g} s)" for service, (upstream, t) in CHECKED.items()
    )
    return f"recovery checks (grpc.health.v1) every {INTERVAL_SECS:g} s while OPEN: {shown}"


def with_recovery_checks(
    policies: list[policy_pb2.ServicePolicy], peers: Mapping[str, str]
) -> list[policy_pb2.ServicePolicy]:
    """Copies of ``policies`` whose checked services ask their upstream at ``peers``."""
    out = []
    for policy in policies:
        copy = policy_pb2.ServicePolicy()
        copy.CopyFrom(policy)
        if policy.service in CHECKED:
            upstream, timeout = CHECKED[policy.service]
            copy.recovery_check.CopyFrom(
                policy_pb2.RecoveryCheckPolicy(
                    target=peers[upstream], interval_secs=INTERVAL_SECS, timeout_secs=timeout
                )
            )
        out.append(copy)
    return out
