"""The seed's ErrorStatistics, aggregated over every agent that reports to this replica."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import errors_pb2

from .policies import PolicyBook

#: Distinct keys kept per dimension; the rest are counted under "other" (agents are
#: not trusted to keep their labels few).
MAX_KEYS = 1000

_TYPE_ENUM = {
    "AgentCriticalFailure": errors_pb2.ERROR_TYPE_AGENT_CRITICAL_FAILURE,
    "LLMProviderUnavailable": errors_pb2.ERROR_TYPE_LLM_PROVIDER_UNAVAILABLE,
    "StorageFailure": errors_pb2.ERROR_TYPE_STORAGE_FAILURE,
    "CircuitBreakerOpen": errors_pb2.ERROR_TYPE_CIRCUIT_BREAKER_OPEN,
    "ResourceExhausted": errors_pb2.ERROR_TYPE_RESOURCE_EXHAUSTED,
    "ConfigurationError": errors_pb2.ERROR_TYPE_CONFIGURATION_ERROR,
    "OperationTimeout": errors_pb2.ERROR_TYPE_OPERATION_TIMEOUT,
}


#: Every total saturates here: the answer's fields are uint64, and a value beyond them
#: would make every later GetErrorStatistics fail.
UINT64_MAX = 2**64 - 1


def saturating_add(total: int, n: int) -> int:
    """``total + n``, held at UINT64_MAX (negative ``n`` counts as 0)."""
    return min(UINT64_MAX, total + max(0, n))


def _bump(counter: Counter[str], key: str, n: int, *, keep: bool = False) -> None:
    if not keep and key not in counter and len(counter) >= MAX_KEYS:
        key = "other"
    counter[key] = saturating_add(counter[key], n)


@dataclass(frozen=True)
class Page:
    """One page of every keyed count: the keys at ``offset`` onward, largest count first."""

    offset: int = 0
    size: int = MAX_KEYS

    @classmethod
    def parse(cls, size: int, token: str) -> Page:
        """Raises ValueError for a token this server did not hand out."""
        if token and not (len(token) <= 12 and token.isascii() and token.isdigit()):
            raise ValueError("a page token is the ASCII digits this server handed out")
        offset = int(token) if token else 0
        return cls(offset, size if 0 < size <= MAX_KEYS else MAX_KEYS)

    def of(self, counter: Counter[str]) -> dict[str, int]:
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        return dict(ranked[self.offset : self.offset + self.size])

    def more(self, *counters: Counter[str]) -> bool:
        return any(len(c) > self.offset + self.size for c in counters)


class FleetStatistics:
    def __init__(self) -> None:
        self.total_errors = 0
        self.by_service: Counter[str] = Counter()
        self.by_agent: Counter[str] = Counter()
        self.by_type: Counter[str] = Counter()
        self.by_operation: Counter[str] = Counter()
        self.breaker_opens = 0
        self.recovery_attempts = 0
        self.recovery_successes = 0
        self.rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.fallbacks_served = 0
        self.fallbacks_failed = 0
        self.spooled = self.spool_replayed = self.spool_dropped = self.spool_held = 0
        self.dropped = 0
        self.slow_by_service: Counter[str] = Counter()
        self.over_cap_by_service: Counter[str] = Counter()

    def record(self, agent: str, summary: pb.OutcomeSummary, *, named: bool = False) -> None:
        """Count one (already bounded) summary. A ``named`` service (one a policy names)
        always keeps its own key; others share the MAX_KEYS places."""
        failures = summary.failures + summary.probe_failures
        if failures:
            self.total_errors = saturating_add(self.total_errors, failures)
            _bump(self.by_service, summary.service, failures, keep=named)
            _bump(self.by_agent, agent, failures)
        for name, n in summary.errors_by_type.items():
            _bump(self.by_type, name, n)
        for name, n in summary.errors_by_operation.items():
            _bump(self.by_operation, name, n)
        self.recovery_attempts = saturating_add(self.recovery_attempts, summary.recovery_attempts)
        self.recovery_successes = saturating_add(
            self.recovery_successes, min(summary.recovery_successes, summary.recovery_attempts)
        )
        self.rejected = saturating_add(self.rejected, summary.rejected)
        for reason, n in summary.rejected_by_reason.items():  # bounded to the four gates
            self.rejected_by_reason[reason] = saturating_add(self.rejected_by_reason[reason], n)
        self.fallbacks_served = saturating_add(self.fallbacks_served, summary.fallbacks_served)
        self.fallbacks_failed = saturating_add(self.fallbacks_failed, summary.fallbacks_failed)
        if summary.slow_calls:
            _bump(self.slow_by_service, summary.service, summary.slow_calls, keep=named)
        if summary.endpoints_over_cap:
            _bump(self.over_cap_by_service, summary.service, summary.endpoints_over_cap, keep=named)
        self.spooled = saturating_add(self.spooled, summary.spooled)
        self.spool_replayed = saturating_add(self.spool_replayed, summary.spool_replayed)
        self.spool_dropped = saturating_add(self.spool_dropped, summary.spool_dropped)
        self.spool_held = saturating_add(self.spool_held, summary.spool_held)

    def add_dropped(self, n: int) -> None:
        self.dropped = saturating_add(self.dropped, n)

    def add_breaker_open(self) -> None:
        self.breaker_opens = saturating_add(self.breaker_opens, 1)

    def more(self, page: Page) -> bool:
        """Whether a keyed count has keys beyond ``page``."""
        return page.more(
            self.by_service, self.by_agent, self.by_type, self.by_operation, self.slow_by_service,
            self.over_cap_by_service,
        )  # fmt: skip

    def to_proto(
        self,
        policies: PolicyBook,
        connected: int,
        fleet_limits: list[pb.FleetLimitUsage] | None = None,
        refused: dict[str, int] | None = None,
        page: Page | None = None,
        capped: dict[str, int] | None = None,
    ) -> pb.ErrorStatistics:
        attempts = self.recovery_attempts
        rate = 100.0 * min(self.recovery_successes, attempts) / attempts if attempts else 0.0
        page = Page() if page is None else page
        refused_counts: Counter[str] = Counter(refused or {})
        message = pb.ErrorStatistics(
            total_errors=self.total_errors,
            errors_by_service=page.of(self.by_service),
            errors_by_agent=page.of(self.by_agent),
            errors_by_type=page.of(self.by_type),
            errors_by_operation=page.of(self.by_operation),
            reports_refused=page.of(refused_counts),
            rejections_capped=page.of(Counter(capped or {})),
            circuit_breaker_opens=self.breaker_opens,
            recovery_success_rate=rate,
            recovery_attempts=self.recovery_attempts,
            recovery_successes=self.recovery_successes,
            calls_rejected=self.rejected,
            rejected_by_reason=dict(self.rejected_by_reason),
            fallbacks_served=self.fallbacks_served,
            fallbacks_failed=self.fallbacks_failed,
            spooled=self.spooled,
            spool_replayed=self.spool_replayed,
            spool_dropped=self.spool_dropped,
            spool_held=self.spool_held,
            outcomes_dropped=self.dropped,
            config_reloads_ok=policies.reloads_ok,
            config_reloads_failed=policies.reloads_failed,
            connected_agents=connected,
            fleet_limits=fleet_limits or [],
            slow_calls_by_service=page.of(self.slow_by_service),
            endpoints_over_cap_by_service=page.of(self.over_cap_by_service),
        )
        if self.by_type:
            top = self.by_type.most_common(1)[0][0]
            message.most_common_error = _TYPE_ENUM.get(top, errors_pb2.ERROR_TYPE_UNSPECIFIED)
        for field, errors in (
            (message.config_errors, policies.errors),
            (message.refused_values_held, policies.refused_now()),
            (message.refused_values_replaced, policies.refused_past()),
        ):
            for err in errors:
                at = Timestamp()
                at.FromNanoseconds(int(err.at * 1e9))
                field.add(key=err.key, error=err.error, at=at)
        return message
