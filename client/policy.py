"""Resilience policy: immutable values, validated when built.

A :class:`ServicePolicy` says how calls to one service are protected (the seed's
``ServiceConfig`` plus backoff, retry budget, bulkhead, quotas, fallbacks). An
:class:`ErrorHandlingConfig` is the seed's whole configuration: defaults plus one policy
per service. Both raise :class:`~mission_control.client.errors.ConfigurationError`
naming **every** bad field when built from bad values; a change makes a new value
(``dataclasses.replace``), which is validated again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from .errors import ConfigurationError
from .recovery_check import MAX_ENDPOINT_LENGTH, RecoveryCheck

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

Violations = list[tuple[str, str]]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_DAY = 86400.0
#: The shortest window a failure-rate or slow-call rule may slide over (its buckets are a
#: tenth of it): shorter ones judge nothing and break the arithmetic.
WINDOW_SECS_MIN = 0.1
#: Most entries in a policy's ``reporters``.
MAX_REPORTERS = 256
#: Most entries in ``record_errors`` / ``ignore_errors``, and the longest entry.
MAX_ERROR_CLASSES = 256
MAX_ERROR_CLASS_LENGTH = 256
#: Highest ``max_endpoints`` a policy may set.
MAX_ENDPOINTS = 10_000
#: Most entries in ``fallbacks``, ``quotas`` (and ``fleet.quotas``) and ``retryable_codes``:
#: with every list and name bounded, a policy's size is bounded, and so is its validation.
MAX_FALLBACKS = 32
MAX_QUOTAS = 64
#: How long an agent spends a fleet limit without a lease before it refuses (see FleetLimits).
UNLEASED_SECS = 30.0
MAX_RETRYABLE_CODES = 32
_CODES = {c.name for c in grpc.StatusCode if c is not grpc.StatusCode.OK}


#: ``Name`` or ``package.module.Name``.
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


#: An endpoint within a service: ``openai/gpt-x`` (parts joined by single slashes).
_ENDPOINT = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def endpoint_problem(endpoint: object) -> str | None:
    """Why ``endpoint`` is not a valid endpoint name (e.g. ``openai/gpt-x``), else None."""
    if not isinstance(endpoint, str) or not endpoint:
        return "must be a non-empty name"
    if len(endpoint) > MAX_ENDPOINT_LENGTH or not _ENDPOINT.fullmatch(endpoint):
        return (
            f"must be 1-{MAX_ENDPOINT_LENGTH} characters of letters, digits, '_', '.', '-' "
            "or single '/' between them"
        )
    return None


def breaker_name_problem(name: object) -> str | None:
    """Why ``name`` is not a breaker name: a service, or ``service/endpoint``; else None."""
    if not isinstance(name, str):
        return "must be a non-empty name"
    service, slash, endpoint = name.partition("/")
    problem = name_problem(service)
    if problem is None and slash:
        problem = endpoint_problem(endpoint)
        return None if problem is None else f"endpoint {problem}"
    return problem


def endpoint_breaker(service: str, endpoint: str) -> str:
    """The breaker name of ``endpoint`` of ``service``: ``llm_provider/openai/gpt-x``."""
    return f"{service}/{endpoint}"


def service_of(name: str) -> str:
    """The service a breaker name belongs to (itself for a service's own breaker)."""
    return name.partition("/")[0]


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid service, breaker or resource name, else None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty name"
    if not _NAME.fullmatch(name):
        return "must be 1-128 characters of letters, digits, '_', '.' or '-'"
    return None


class _Checks:
    """Collects violations with their field paths."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.found: Violations = []

    def add(self, name: str, message: str) -> None:
        self.found.append((f"{self.prefix}{name}", message))

    def number(self, name: str, value: Any, *, low: float, high: float, strict: bool) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(name, "must be a number")
        elif not math.isfinite(value):
            self.add(name, "must be a finite number")
        elif (value <= low) if strict else (value < low):
            self.add(name, f"must be {'>' if strict else '>='} {low:g}")
        elif value > high:
            self.add(name, f"must be <= {high:g}")

    def integer(self, name: str, value: Any, *, low: int, high: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(name, "must be an integer")
        elif value < low:
            self.add(name, f"must be {'> 0' if low == 1 else f'>= {low}'}")
        elif value > high:
            self.add(name, f"must be <= {high}")

    def raise_if_any(self) -> None:
        if self.found:
            raise ConfigurationError.from_violations(self.found)


def _validated(obj: Any, check: Any) -> None:
    checks = _Checks()
    check(obj, checks)
    checks.raise_if_any()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between retries: ``initial_secs * multiplier**n``, capped,
    plus up to ``jitter`` × the delay of random extra wait."""

    initial_secs: float = 0.1
    max_secs: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _validated(self, Backoff.check)

    @staticmethod
    def check(b: Backoff, c: _Checks) -> None:
        c.number("initial_backoff_secs", b.initial_secs, low=0, high=_DAY, strict=True)
        c.number("max_backoff_secs", b.max_secs, low=0, high=_DAY, strict=True)
        c.number("multiplier", b.multiplier, low=1, high=100, strict=False)
        c.number("jitter", b.jitter, low=0, high=1, strict=False)
        if not c.found and b.max_secs < b.initial_secs:
            c.add("max_backoff_secs", "must be >= initial_backoff_secs")


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries may be at most ``ratio`` × calls over ``window_secs``, plus
    ``min_retries_per_second`` always allowed (the idea of gRPC retryThrottling)."""

    ratio: float = 0.2
    min_retries_per_second: float = 1.0
    window_secs: float = 10.0

    def __post_init__(self) -> None:
        _validated(self, RetryBudget.check)

    @staticmethod
    def check(b: RetryBudget, c: _Checks) -> None:
        c.number("ratio", b.ratio, low=0, high=100, strict=False)
        c.number("min_retries_per_second", b.min_retries_per_second, low=0, high=1e6, strict=False)
        c.number("window_secs", b.window_secs, low=0, high=_DAY, strict=True)


@dataclass(frozen=True, slots=True)
class FailureRate:
    """Open the breaker when at least ``threshold`` of the calls in the last
    ``window_secs`` failed, once the window holds ``minimum_calls`` calls."""

    threshold: float = 0.5
    minimum_calls: int = 20
    window_secs: float = 60.0

    def __post_init__(self) -> None:
        _validated(self, FailureRate.check)

    @staticmethod
    def check(r: FailureRate, c: _Checks) -> None:
        c.number("threshold", r.threshold, low=0, high=1, strict=True)
        c.integer("minimum_calls", r.minimum_calls, low=1, high=1_000_000)
        c.number("window_secs", r.window_secs, low=WINDOW_SECS_MIN, high=_DAY, strict=False)


@dataclass(frozen=True, slots=True)
class SlowCall:
    """Open the breaker when at least ``rate_threshold`` of the calls judged in the last
    ``window_secs`` ran longer than ``duration_threshold_secs``, once the window holds
    ``minimum_calls`` (resilience4j's slow-call rule). A slow call still succeeds for its
    caller; it is judged slow as soon as it passes the duration, even while running."""

    duration_threshold_secs: float = 1.0
    rate_threshold: float = 0.5
    minimum_calls: int = 10
    window_secs: float = 10.0

    def __post_init__(self) -> None:
        _validated(self, SlowCall.check)

    @staticmethod
    def check(s: SlowCall, c: _Checks) -> None:
        c.number("duration_threshold_secs", s.duration_threshold_secs, low=0, high=_DAY, strict=True)
        c.number("rate_threshold", s.rate_threshold, low=0, high=1, strict=True)
        c.integer("minimum_calls", s.minimum_calls, low=1, high=1_000_000)
        c.number("window_secs", s.window_secs, low=WINDOW_SECS_MIN, high=_DAY, strict=False)


@dataclass(frozen=True, slots=True)
class Quota:
    """A named budget spent by weighted calls, e.g. ``llm_tokens``: ``limit`` units per
    ``window_secs``; a call says its cost."""

    resource: str
    limit: int
    window_secs: float = 60.0

    def __post_init__(self) -> None:
        _validated(self, Quota.check)

    @staticmethod
    def check(q: Quota, c: _Checks) -> None:
        problem = name_problem(q.resource)
        if problem:
            c.add("resource", problem)
        c.integer("limit", q.limit, low=1, high=2**62)
        c.number("window_secs", q.window_secs, low=0, high=_DAY, strict=True)


#: The smallest hedge budget: a tinier positive ``max_extra_ratio`` would allow no hedge.
MIN_EXTRA_RATIO = 0.001


@dataclass(frozen=True, slots=True)
class Hedging:
    """Hedged requests for idempotent calls (gRPC A6 hedging): up to ``max_attempts`` in
    all, the next one after a delay without an answer (or at once when one fails with a
    retryable code or is refused); the first good answer wins.

    The delay is ``delay_secs``, or with ``delay_percentile`` that percentile of the
    service's recent successful attempts (``delay_secs`` until there are enough of them),
    never under ``min_delay_secs``. ``max_extra_ratio`` > 0 is a hedge budget: hedges at
    most that share of calls (+ a small start allowance), spent instead of the retry
    budget by hedges sent for a slow answer (those sent after a failure are retries and
    spend the retry budget only). 0 is no hedge budget: hedges are limited only by the
    retry budget; a positive ratio under :data:`MIN_EXTRA_RATIO` is refused (it would
    mean no hedges at all, the opposite of 0)."""

    max_attempts: int = 2
    delay_secs: float = 0.1
    #: 0: the delay is ``delay_secs``; else 50..99.9, the percentile of recent latencies.
    delay_percentile: float = 0.0
    min_delay_secs: float = 0.0
    #: 0: no hedge budget (every hedge spends the retry budget); else MIN_EXTRA_RATIO..1.
    max_extra_ratio: float = 0.0

    def __post_init__(self) -> None:
        _validated(self, Hedging.check)

    @staticmethod
    def check(h: Hedging, c: _Checks) -> None:
        c.integer("max_attempts", h.max_attempts, low=2, high=5)
        c.number("delay_secs", h.delay_secs, low=0, high=_DAY, strict=False)
        c.number("min_delay_secs", h.min_delay_secs, low=0, high=_DAY, strict=False)
        checks = len(c.found)
        c.number("delay_percentile", h.delay_percentile, low=0, high=99.9, strict=False)
        if len(c.found) == checks and 0 < h.delay_percentile < 50:
            c.add("delay_percentile", "must be 0 (a fixed delay) or from 50 to 99.9")
        checks = len(c.found)
        c.number("max_extra_ratio", h.max_extra_ratio, low=0, high=1, strict=False)
        if len(c.found) == checks and 0 < h.max_extra_ratio < MIN_EXTRA_RATIO:
            c.add("max_extra_ratio", f"must be 0 (no hedge budget) or from {MIN_EXTRA_RATIO} to 1")


@dataclass(frozen=True, slots=True)
class FleetLimits:
    """Which of a service's limits the whole fleet shares (leased out by the control plane
    each ``lease_secs`` by demand) instead of every agent having its own."""

    rate_limit: bool = False
    quotas: tuple[str, ...] = ()
    lease_secs: float = 1.0
    #: Share of the fleet limit an agent spends without a lease; None = its last lease.
    safe_share: float | None = None
    #: How long an agent spends without a lease (after its last one) before it refuses:
    #: the leader keeps that long aside for agents cut off from it.
    unleased_secs: float = UNLEASED_SECS

    def __post_init__(self) -> None:
        object.__setattr__(self, "quotas", tuple(self.quotas))
        _validated(self, FleetLimits.check)

    @staticmethod
    def check(f: FleetLimits, c: _Checks) -> None:
        if not isinstance(f.rate_limit, bool):
            c.add("rate_limit", "must be true or false")
        c.number("lease_secs", f.lease_secs, low=0.05, high=60, strict=False)
        if f.safe_share is not None:
            c.number("safe_share", f.safe_share, low=0, high=1, strict=True)
        c.number("unleased_secs", f.unleased_secs, low=1, high=3600, strict=False)
        for i, name in enumerate(_too_many(c, "quotas", f.quotas, MAX_QUOTAS)):
            problem = name_problem(name)
            if problem:
                c.add(f"quotas[{i}]", problem)


def _shown(value: object, limit: int = 64) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _too_many(c: _Checks, key: str, items: tuple[Any, ...], most: int) -> tuple[Any, ...]:
    """The first ``most`` of ``items``; a violation when there are more."""
    if len(items) > most:
        c.add(key, f"at most {most} entries (has {len(items)})")
    return items[:most]


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
