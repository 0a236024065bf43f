"""A fleet-wide retry budget (Linkerd's retry budgets, for the whole fleet): the retries of
every agent together stay under ``ratio`` × the fleet's calls plus
``min_retries_per_second``, instead of each agent keeping that ratio on its own (where N
agents add N times the minimum, and one agent's quiet calls fund another's retries).

Carried by the fleet-lease machinery (:mod:`.fleet_limits`): each agent reports, per lease
period, the calls it made (resource ``<service>.calls``: metered, never leased) and the
retries it wanted (``<service>.retries``); the control plane sets the next period's fleet
retries to ``ratio`` × the calls of the last period + ``min_retries_per_second`` × the
period and splits them by demand. The minimum is in the lease only while the fleet is
healthy: an agent also reports its failed attempts (``<service>.failures``, metered), and
after a period whose attempts (calls and retries) failed more than half, the next periods
have no minimum until a period fails at most half (a period without attempts changes
nothing) — in a full outage the fleet's retries tend to ``ratio`` × its calls whatever the
call rate, as each agent's own budget does (:class:`.limits.RetryBudget`).
In a period it holds a lease for, an agent spends that
lease; in any other (no control plane, not yet, or the control plane out of reach and the
last lease run out) it spends its own per-agent budget — not its last lease, which may
have been 0 retries for as long as the control plane stays down.
"""

from __future__ import annotations

from .fleet_limits import LeasedBudget
from .limits import RetryBudget
from .policy import ServicePolicy

__all__ = [
    "FleetRetryBudget",
    "calls_resource",
    "failures_resource",
    "fleet_healthy",
    "fleet_retry_units",
    "metered_resources",
    "retries_resource",
    "retry_resources",
]

#: The units of the metered calls resource: never a limit.
UNLIMITED = 1e12


def retries_resource(service: str) -> str:
    return f"{service}.retries"


def calls_resource(service: str) -> str:
    return f"{service}.calls"


def failures_resource(service: str) -> str:
    return f"{service}.failures"


def metered_resources(service: str) -> tuple[str, str]:
    """The resources agents report and the control plane only counts: calls, failures."""
    return calls_resource(service), failures_resource(service)


def lease_secs(policy: ServicePolicy) -> float:
    return policy.fleet.lease_secs if policy.fleet is not None else 1.0


def fleet_retry_units(policy: ServicePolicy, fleet_calls: float, healthy: bool = True) -> float:
    """The fleet's retries for one lease period after a period of ``fleet_calls`` calls;
    the minimum only while the fleet is ``healthy``."""
    budget = policy.retry_budget
    floor = budget.min_retries_per_second * lease_secs(policy) if healthy else 0.0
    return budget.ratio * fleet_calls + floor


def fleet_healthy(attempts: float, failures: float, before: bool) -> bool:
    """Whether the fleet is healthy after a period of ``attempts`` of which ``failures``
    failed (``before``: what it was; a period without attempts leaves it so)."""
    if attempts <= 0 and failures <= 0:
        return before
    return failures * 2 <= max(attempts, failures)


def retry_resources(policy: ServicePolicy) -> dict[str, tuple[float, float, float | None]]:
    """The lease budgets the policy's fleet retry budget needs: resource -> (fleet units,
    period, safe share); none unless ``fleet_retry_budget``."""
    if not policy.fleet_retry_budget:
        return {}
    period = lease_secs(policy)
    return {
        retries_resource(policy.service): (fleet_retry_units(policy, 0.0), period, None),
        calls_resource(policy.service): (UNLIMITED, period, 1.0),
        failures_resource(policy.service): (UNLIMITED, period, 1.0),
    }


class FleetRetryBudget:
    """The retry budget of one service in an agent: the fleet's lease, else its own."""

    __slots__ = ("calls", "failures", "local", "retries")

    def __init__(
        self, local: RetryBudget, retries: LeasedBudget, calls: LeasedBudget, failures: LeasedBudget
    ) -> None:
        self.local = local
        self.retries = retries
        self.calls = calls
        self.failures = failures

    def record_call(self, now: float) -> None:
        self.local.record_call(now)
        self.calls.take(1.0, now)

    def succeeded(self, now: float) -> None:
        self.local.succeeded(now)

    def failed(self, now: float) -> None:
        self.local.failed(now)
        self.failures.take(1.0, now)

    def try_retry(self, now: float) -> bool:
        """Spend one retry (or hedge) if the budget allows it; what was asked is reported
        as the agent's demand either way."""
        leased = self.retries.take(1.0, now) == 0.0
        if not self.retries.leased:  # never leased, or no lease for this period: its own budget
            return self.local.try_retry(now)
        return leased
