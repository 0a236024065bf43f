"""Shadow mode: a candidate policy evaluated beside the enforced one, never enforced.

Each call that passes the enforced breaker is also put to the candidate's own rate limit,
quotas and bulkhead, which keep their own tokens and places: what the candidate *would*
have refused is counted, and the call goes on exactly as the enforced policy decides. A
failed attempt is also put to the candidate's retry rule. The candidate's breaker is not
evaluated here: the control plane runs it over the fleet's outcomes.

With no candidate a service's ``shadow`` is None and a call pays one attribute read.
"""

from __future__ import annotations

from collections.abc import Mapping

from .limits import TokenBucket
from .policy import ServicePolicy

__all__ = ["ShadowLimits"]


class ShadowLimits:
    """The candidate policy's limits for one service on this agent. Call with the
    service's lock held (as the enforced limits are)."""

    __slots__ = ("bucket", "in_flight", "policy", "quotas")

    def __init__(self, policy: ServicePolicy, now: float) -> None:
        self.policy = policy
        self.bucket = TokenBucket(policy.rate_limit_requests, policy.rate_limit_window_secs, now)
        self.quotas = {q.resource: TokenBucket(q.limit, q.window_secs, now) for q in policy.quotas}
        self.in_flight = 0

    def admit(self, cost: Mapping[str, float] | None, now: float, place: bool) -> str | None:
        """Take what the candidate would take for one attempt; returns the gate that would
        have refused it ("rate_limit", "quota" or "bulkhead"), or None (then, when
        ``place``, it holds a bulkhead place until :meth:`leave`)."""
        if self.bucket.take(1.0, now):
            return "rate_limit"
        taken: list[tuple[TokenBucket, float]] = [(self.bucket, 1.0)]
        for resource, amount in (cost or {}).items():
            quota = self.quotas.get(resource)
            if quota is None:
                continue  # a resource the candidate does not limit
            if quota.take(amount, now):
                _give_back(taken)
                return "quota"
            taken.append((quota, amount))
        if place:
            limit = self.policy.max_concurrent
            if limit and self.in_flight >= limit:
                _give_back(taken)
                return "bulkhead"
            self.in_flight += 1
        return None

    def leave(self) -> None:
        """A call that held a bulkhead place under the candidate ended."""
        if self.in_flight:
            self.in_flight -= 1

    def would_retry(self, code: str | None, attempts: int) -> bool:
        """Whether the candidate would retry a failure with gRPC status ``code`` (its name)
        after ``attempts`` attempts of the call (the retry budget is not modelled)."""
        policy = self.policy
        return code is not None and attempts <= policy.max_retries and code in policy.retryable_codes


def _give_back(taken: list[tuple[TokenBucket, float]]) -> None:
    for bucket, spent in taken:
        bucket.give_back(spent)
