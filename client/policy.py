"""Resilience policy: immutable values, validated when built.

A :class:`ServicePolicy` says how calls to one service are protected (the seed's
``ServiceConfig`` plus backoff, retry budget, bulkhead, quotas, fallbacks), built of the
parts in :mod:`.policy_parts`. An :class:`~.config.ErrorHandlingConfig` is the seed's whole
configuration: defaults plus one policy per service. Both raise
:class:`~mission_control.client.errors.ConfigurationError` naming **every** bad field when
built from bad values; a change makes a new value (``dataclasses.replace``), which is
validated again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .policy_parts import (
    _CLASS_NAME,
    _CODES,
    _DAY,
    MAX_ENDPOINTS,
    MAX_ERROR_CLASS_LENGTH,
    MAX_ERROR_CLASSES,
    MAX_FALLBACKS,
    MAX_QUOTAS,
    MAX_REPORTERS,
    MAX_RETRYABLE_CODES,
    Backoff,
    FailureRate,
    FleetLimits,
    Hedging,
    Quota,
    RetryBudget,
    SlowCall,
    _Checks,
    _shown,
    _too_many,
    _validated,
    breaker_name_problem,
    endpoint_breaker,
    endpoint_problem,
    name_problem,
    service_of,
)
from .policy_parts import UNLEASED_SECS as UNLEASED_SECS  # named from here by others
from .policy_parts import WINDOW_SECS_MIN as WINDOW_SECS_MIN
from .recovery_check import RecoveryCheck

__all__ = [
    "SEED_PRESETS",
    "Backoff",
    "FailureRate",
    "FleetLimits",
    "Quota",
    "RecoveryCheck",
    "RetryBudget",
    "ServicePolicy",
    "SlowCall",
    "breaker_name_problem",
    "default_policy",
    "endpoint_breaker",
    "endpoint_problem",
    "service_of",
]


def _check_codes(codes: tuple[str, ...], c: _Checks) -> None:
    for i, code in enumerate(_too_many(c, "retryable_codes", codes, MAX_RETRYABLE_CODES)):
        if code not in _CODES:
            c.add(f"retryable_codes[{i}]", "not a gRPC status code name (e.g. UNAVAILABLE)")


def _check_quota_names(quotas: tuple[Quota, ...], c: _Checks) -> set[str]:
    """The quotas' resource names (duplicates reported)."""
    seen: set[str] = set()
    for i, quota in enumerate(_too_many(c, "quotas", quotas, MAX_QUOTAS)):
        if quota.resource in seen:
            c.add(f"quotas[{i}].resource", f"duplicate quota {quota.resource!r}")
        seen.add(quota.resource)
    return seen


def _check_fallbacks(p: ServicePolicy, c: _Checks) -> None:
    seen: set[str] = set()
    for i, name in enumerate(_too_many(c, "fallbacks", p.fallbacks, MAX_FALLBACKS)):
        problem = breaker_name_problem(name)
        if problem:
            c.add(f"fallbacks[{i}]", problem)
        elif name == p.service:
            c.add(f"fallbacks[{i}]", "a service cannot be its own fallback")
        elif name in seen:
            c.add(f"fallbacks[{i}]", f"duplicate fallback {name!r}")
        else:
            seen.add(name)


DEFAULT_RETRYABLE_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """How calls to one service are protected. Defaults are the seed's ``ServiceConfig``.

    Raises:
        ConfigurationError: when any field is invalid; ``violations`` names them all.
    """

    service: str
    timeout_secs: float = 30.0
    max_retries: int = 3
    failure_threshold: int = 5
    success_threshold: int = 3
    wait_duration_secs: float = 60.0
    rate_limit_requests: int = 100
    rate_limit_window_secs: float = 60.0
    #: Each HALF_OPEN whose probe fails opens again for this many times the previous
    #: wait (resilience4j's exponential wait in the OPEN state); 1 = every wait the same.
    wait_duration_multiplier: float = 2.0
    #: The longest wait it grows to (never below ``wait_duration_secs``).
    max_wait_duration_secs: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)
    retryable_codes: tuple[str, ...] = DEFAULT_RETRYABLE_CODES
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    #: Bulkhead: most calls in flight per agent; 0 = no limit.
    max_concurrent: int = 0
    quotas: tuple[Quota, ...] = ()
    fallbacks: tuple[str, ...] = ()
    #: Trip on failure rate too; None = consecutive failures only (the seed).
    failure_rate: FailureRate | None = None
    #: Limits shared by the fleet; None = every limit is per agent.
    fleet: FleetLimits | None = None
    #: Calls may run twice: a late call may still be retried or sent to a fallback.
    idempotent: bool = False
    #: Exception class names (``FileNotFoundError``, ``pkg.module.Error``) that count as
    #: failures of the service / as the caller's own (see ``client.outcomes``).
    record_errors: tuple[str, ...] = ()
    ignore_errors: tuple[str, ...] = ()
    #: Who may report outcomes of this service to the control plane: agent ids, or
    #: ``prefix*`` for a group; empty = every agent.
    reporters: tuple[str, ...] = ()
    #: Trip on the share of slow calls too; None = slowness never opens the breaker.
    slow_call: SlowCall | None = None
    #: Most endpoints with a breaker of their own; calls to more share the service's.
    max_endpoints: int = 64
    #: An endpoint breaker without calls for this long is forgotten.
    endpoint_idle_secs: float = 300.0
    #: Hedged requests for idempotent calls; None = none.
    hedging: Hedging | None = None
    #: The retry budget holds for the fleet, leased by the control plane (see
    #: ``client.fleet_retries``); without one each agent keeps it on its own.
    fleet_retry_budget: bool = False
    #: Ask the service while its breaker is OPEN whether it serves again; None = only wait.
    recovery_check: RecoveryCheck | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "retryable_codes", tuple(self.retryable_codes))
        object.__setattr__(self, "quotas", tuple(self.quotas))
        object.__setattr__(self, "fallbacks", tuple(self.fallbacks))
        object.__setattr__(self, "record_errors", tuple(self.record_errors))
        object.__setattr__(self, "ignore_errors", tuple(self.ignore_errors))
        object.__setattr__(self, "reporters", tuple(self.reporters))
        _validated(self, ServicePolicy.check)

    @staticmethod
    def check(p: ServicePolicy, c: _Checks) -> None:
        problem = name_problem(p.service)
        if problem:
            c.add("service", problem)
        c.number("timeout_secs", p.timeout_secs, low=0, high=_DAY, strict=True)
        c.integer("max_retries", p.max_retries, low=0, high=100)
        c.integer("failure_threshold", p.failure_threshold, low=1, high=1_000_000)
        c.integer("success_threshold", p.success_threshold, low=1, high=10_000)
        c.number("wait_duration_secs", p.wait_duration_secs, low=0, high=_DAY, strict=True)
        c.number("wait_duration_multiplier", p.wait_duration_multiplier, low=1, high=100, strict=False)
        c.number("max_wait_duration_secs", p.max_wait_duration_secs, low=0, high=_DAY, strict=True)
        c.integer("rate_limit_requests", p.rate_limit_requests, low=1, high=2**62)
        c.number("rate_limit_window_secs", p.rate_limit_window_secs, low=0, high=_DAY, strict=True)
        c.integer("max_concurrent", p.max_concurrent, low=0, high=1_000_000)
        c.integer("max_endpoints", p.max_endpoints, low=0, high=MAX_ENDPOINTS)
        c.number("endpoint_idle_secs", p.endpoint_idle_secs, low=0, high=_DAY, strict=True)
        _check_codes(p.retryable_codes, c)
        names = _check_quota_names(p.quotas, c)
        _check_fallbacks(p, c)
        if not isinstance(p.idempotent, bool):
            c.add("idempotent", "must be true or false")
        if not isinstance(p.fleet_retry_budget, bool):
            c.add("fleet_retry_budget", "must be true or false")
        for key in ("record_errors", "ignore_errors"):
            if len(getattr(p, key)) > MAX_ERROR_CLASSES:
                c.add(key, f"at most {MAX_ERROR_CLASSES} entries")
            for i, name in enumerate(getattr(p, key)[:MAX_ERROR_CLASSES]):
                if isinstance(name, str) and len(name) > MAX_ERROR_CLASS_LENGTH:
                    c.add(f"{key}[{i}]", f"at most {MAX_ERROR_CLASS_LENGTH} characters")
                elif not isinstance(name, str) or not _CLASS_NAME.fullmatch(name):
                    c.add(f"{key}[{i}]", f"not an exception class name: {_shown(name)}")
        if len(p.reporters) > MAX_REPORTERS:
            c.add("reporters", f"at most {MAX_REPORTERS} entries")
        for i, pattern in enumerate(p.reporters[:MAX_REPORTERS]):
            problem = name_problem(
                pattern[:-1] if isinstance(pattern, str) and pattern.endswith("*") else pattern
            )
            if problem:
                c.add(f"reporters[{i}]", f"{problem} (an agent id, or a prefix ending in '*')")
        if p.fleet is not None:
            for i, name in enumerate(p.fleet.quotas[:MAX_QUOTAS]):
                if name not in names:
                    c.add(f"fleet.quotas[{i}]", f"no quota named {name!r} in this policy")

    def open_wait(self, previous: float | None) -> float:
        """How long the breaker stays OPEN: ``wait_duration_secs`` when it opens from
        CLOSED (``previous`` None), else the wait before it times the multiplier, up to
        ``max_wait_duration_secs`` and never under ``wait_duration_secs``."""
        base = self.wait_duration_secs
        if previous is None:
            return base
        return max(base, min(previous * self.wait_duration_multiplier, self.longest_wait()))

    def longest_wait(self) -> float:
        """The longest a breaker under this policy stays OPEN (the last of its waits)."""
        if self.wait_duration_multiplier <= 1:
            return self.wait_duration_secs
        return max(self.wait_duration_secs, self.max_wait_duration_secs)

    def fleet_resources(self) -> dict[str, tuple[float, float]]:
        """Fleet-shared resources: name -> (units per window, window seconds)."""
        if self.fleet is None:
            return {}
        found = {}
        if self.fleet.rate_limit:
            found[f"{self.service}.requests"] = (float(self.rate_limit_requests), self.rate_limit_window_secs)
        for quota in self.quotas:
            if quota.resource in self.fleet.quotas:
                found[quota.resource] = (float(quota.limit), quota.window_secs)
        return found

    def replace(self, **changes: Any) -> ServicePolicy:
        """A new, validated policy with ``changes`` applied."""
        return replace(self, **changes)


#: The seed's three service presets (its breaker builders and config file).
SEED_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "llm_provider": dict(
        timeout_secs=30.0,
        max_retries=3,
        failure_threshold=5,
        success_threshold=3,
        wait_duration_secs=60.0,
        rate_limit_requests=100,
        rate_limit_window_secs=60.0,
        backoff=Backoff(initial_secs=0.1),
        # The seed's RESOURCE_MANAGER budgets "llm_tokens": guard(..., cost={"llm_tokens": n}).
        quotas=(Quota("llm_tokens", 90_000, 60.0),),
    ),
    "storage_backend": dict(
        timeout_secs=10.0,
        max_retries=2,
        failure_threshold=3,
        success_threshold=2,
        wait_duration_secs=30.0,
        rate_limit_requests=500,
        rate_limit_window_secs=60.0,
        backoff=Backoff(initial_secs=0.05),
    ),
    "agent_communication": dict(
        timeout_secs=5.0,
        max_retries=2,
        failure_threshold=10,
        success_threshold=5,
        wait_duration_secs=15.0,
        rate_limit_requests=1000,
        rate_limit_window_secs=60.0,
        backoff=Backoff(initial_secs=0.025),
    ),
}


def default_policy(service: str, **overrides: Any) -> ServicePolicy:
    """The seed's policy for ``service``: its preset when the seed names it, else the
    ``ServiceConfig`` defaults; ``overrides`` replace fields."""
    values = dict(SEED_PRESETS.get(service, {}))
    values.update(overrides)
    return ServicePolicy(service=service, **values)
