"""The parts a resilience policy is made of, and the rules every name in it follows.

Each part (:class:`Backoff`, :class:`RetryBudget`, :class:`FailureRate`, :class:`SlowCall`,
:class:`Quota`, :class:`Hedging`, :class:`FleetLimits`) is an immutable value that checks
itself when built and raises :class:`~mission_control.client.errors.ConfigurationError`
naming every bad field; :class:`~.policy.ServicePolicy` is built of them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import ConfigurationError
from .recovery_check import MAX_ENDPOINT_LENGTH

__all__ = [
    "Backoff",
    "FailureRate",
    "FleetLimits",
    "Hedging",
    "Quota",
    "RetryBudget",
    "SlowCall",
    "breaker_name_problem",
    "endpoint_breaker",
    "endpoint_problem",
    "name_problem",
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
