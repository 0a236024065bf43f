"""Shadow mode on the control plane: candidate policies stored, pushed, scored, promoted.

A candidate is stored like a policy, as protobuf JSON under ``<prefix>/shadow/policies/``,
and is validated and kept by a :class:`PolicyBook` of its own (a bad stored value is
refused and shown, the last good one stays). Agents receive the candidates in their
snapshot and as :class:`ShadowPolicyUpdate` messages and report what each would have
refused or retried; here every replica adds that up beside what the enforced policy did,
and runs the candidate's breaker rule over the same outcomes (the *shadow breaker*) — the
leader sees every replica's agents, so its figures are the fleet's. Nothing of a candidate
is ever enforced, here or on an agent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mission_control.client.breaker import BreakerState, CircuitBreaker, Transition
from mission_control.client.config import policy_to_json
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .policies import PolicyBook
from .store import Write

__all__ = ["SHADOW_GATES", "ShadowTrials", "shadow_book"]

#: The gates an agent evaluates a candidate's limits at.
SHADOW_GATES = frozenset({"rate_limit", "quota", "bulkhead"})


def shadow_book(prefix: str, wall: Callable[[], float] = time.time) -> PolicyBook:
    """The candidates' book: keys ``<prefix>/shadow/policies/<service>``."""
    return PolicyBook(prefix.rstrip("/") + "/shadow", wall)


@dataclass
class _Trial:
    """One candidate's figures since it was published, beside the enforced policy's."""

    breaker: CircuitBreaker
    calls: int = 0
    retries: int = 0
    shadow_retries: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    shadow_rejected: Counter[str] = field(default_factory=Counter)
    opens: int = 0
    closes: int = 0

    def moved(self, move: Transition | None) -> None:
        if move is None:
            return
        if move.new is BreakerState.OPEN:
            self.opens += 1
        elif move.new is BreakerState.CLOSED:
            self.closes += 1


class ShadowTrials:
    """Per service with a candidate: the side-by-side counts and the shadow breaker.

    Args:
        enforced_state: the enforced breaker's state of a service (None: none held).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        enforced_state: Callable[[str], BreakerState | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._enforced_state = enforced_state
        self._clock = clock
        self._trials: dict[str, _Trial] = {}

    def candidate_changed(self, service: str, policy: ServicePolicy | None) -> None:
        """A candidate published (a new trial starts over) or cleared (its trial ends)."""
        if policy is None:
            self._trials.pop(service, None)
        else:
            self._trials[service] = _Trial(CircuitBreaker(service, policy, self._clock()))

    def record(self, agent: str, summary: pb.OutcomeSummary) -> None:
        """Count one (already bounded) outcome summary, if its service is on trial."""
        trial = self._trials.get(summary.service)
        if trial is None:
            return
        trial.calls += summary.shadow_calls
        trial.retries += summary.retries
        trial.shadow_retries += summary.shadow_retries
        trial.rejected.update(dict(summary.rejected_by_reason))
        trial.shadow_rejected.update(dict(summary.shadow_rejected_by_reason))
        self._feed_breaker(trial, summary)

    def _feed_breaker(self, trial: _Trial, summary: pb.OutcomeSummary) -> None:
        """The candidate's breaker rule over the outcomes the enforced breaker was fed."""
        now = self._clock()
        breaker = trial.breaker
        trial.moved(breaker.tick(now))
        successes = summary.successes + summary.probe_successes
        failures = summary.failures + summary.probe_failures
        if not successes and not failures:
            return
        if breaker.state is BreakerState.OPEN:  # every one of these would have been refused
            trial.shadow_rejected["breaker"] += successes + failures
        elif breaker.state is BreakerState.HALF_OPEN:
            # The calls would have been its probes, up to success_threshold of them; the
            # order within a batch is not known, so a failure in it reopens.
            probes = breaker.policy.success_threshold
            trial.shadow_rejected["breaker"] += max(0, successes + failures - probes)
            trial.moved(breaker.record_probes(now, "fleet", min(successes, probes), min(failures, probes)))
        else:
            trial.moved(breaker.record(now, successes, failures, summary.trailing_failures))

    def to_proto(self) -> list[pb.ShadowServiceStatistics]:
        now = self._clock()
        rows = []
        for service in sorted(self._trials):
            trial = self._trials[service]
            trial.moved(trial.breaker.tick(now))
            enforced = self._enforced_state(service) or BreakerState.CLOSED
            rows.append(
                pb.ShadowServiceStatistics(
                    service=service,
                    calls=trial.calls,
                    rejected_by_reason=dict(trial.rejected),
                    shadow_rejected_by_reason=dict(trial.shadow_rejected),
                    retries=trial.retries,
                    shadow_retries=trial.shadow_retries,
                    breaker_state=int(enforced),  # type: ignore[arg-type]
                    shadow_breaker_state=int(trial.breaker.state),  # type: ignore[arg-type]
                    shadow_breaker_opens=trial.opens,
                    shadow_breaker_closes=trial.closes,
                    shadow_breaker_reason=trial.breaker.reason,
                )
            )
        return rows


#: Calls a summary may evaluate beyond those it reports outcomes of: a call is evaluated when
#: it starts, and its outcome may fall into the next batch.
IN_FLIGHT_SLACK = 1024


def bound_shadow(summary: pb.OutcomeSummary, out: pb.OutcomeSummary, allowed: int) -> None:
    """Copy ``summary``'s shadow counts into the bounded ``out``: hardly more calls than the
    agent could have made, refusals only at the candidate's gates. (Shadow counts decide
    nothing; they are bounded so that one agent cannot swamp the statistics.)"""
    out.shadow_calls = min(summary.shadow_calls, allowed + out.rejected + IN_FLIGHT_SLACK)
    for reason, n in summary.shadow_rejected_by_reason.items():
        if reason in SHADOW_GATES:
            out.shadow_rejected_by_reason[reason] = min(n, out.shadow_calls)
    out.retries = min(summary.retries, allowed)
    out.shadow_retries = min(summary.shadow_retries, out.failures + out.probe_failures)


def shadow_write(book: PolicyBook, policy: ServicePolicy | None, service: str, expected: int | None) -> Write:
    """The store write that publishes ``policy`` as ``service``'s candidate (None: clears)."""
    value = None if policy is None else policy_to_json(policy).encode()
    return Write(book.key(service), value, expected)


def no_candidate(service: str) -> ConfigurationError:
    return ConfigurationError("service", f"{service!r} has no policy in shadow mode")
