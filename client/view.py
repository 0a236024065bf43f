"""The agent's local view: per service, everything a call is decided from.

The control-plane connection writes into it (policies, fleet breaker states, probe
permits); the hot path reads it with one dict lookup and never waits on the network.
Fleet state arrives as a snapshot that replaces the previous one, then as changes. When the
control plane is out of reach, the last fleet state stays in force until it expires by its
own rules (an OPEN until its wait is over; operator states until a control plane says
otherwise), and each service's *local* breaker — fed by this agent's own outcomes all
along — decides the rest (fail static).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .breaker import BreakerState, CircuitBreaker
from .fleet_limits import LeasedBudget
from .limits import Bulkhead, RetryBudget, TokenBucket
from .policy import ServicePolicy, default_policy
from .probes import FleetProbe, GiveBack, ProbePermits

__all__ = ["FleetBreaker", "LocalView", "ServiceState", "Tally"]

#: Operator states: in force until a control plane says otherwise.
_STICKY = frozenset({BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED, BreakerState.DISABLED})


@dataclass(frozen=True, slots=True)
class FleetBreaker:
    """A breaker as the control plane last said, with times on this process's clock."""

    state: BreakerState
    failures: int
    open_until: float
    generation: int


class Tally:
    """Outcomes of one service's calls since the last batch sent to the control plane."""

    __slots__ = (
        "errors_by_operation",
        "errors_by_type",
        "failures",
        "fallbacks_failed",
        "fallbacks_served",
        "probe_failures",
        "probe_generation",
        "probe_successes",
        "probes_released",
        "recovery_attempts",
        "recovery_successes",
        "rejected",
        "rejected_by_reason",
        "successes",
        "trailing_failures",
    )

    def __init__(self) -> None:
        self.successes = self.failures = self.trailing_failures = self.rejected = 0
        self.probe_successes = self.probe_failures = self.probes_released = 0
        #: The breaker generation the probe counts belong to (0 = not said).
        self.probe_generation = 0
        self.recovery_attempts = self.recovery_successes = 0
        self.errors_by_type: Counter[str] = Counter()
        self.errors_by_operation: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.fallbacks_served = self.fallbacks_failed = 0

    def empty(self) -> bool:
        return not (
            self.successes or self.failures or self.rejected or self.probe_successes
            or self.probe_failures or self.probes_released or self.recovery_attempts
            or self.fallbacks_served or self.fallbacks_failed
        )  # fmt: skip

    def merge(self, summary: pb.OutcomeSummary, *, earlier: bool = False) -> None:
        """Add a summary's counts; ``earlier`` when its outcomes happened before this tally's
        (a batch sent again), else after — which decides the trailing failures."""
        # Without a success, every failure of a summary is a trailing one (senders may leave
        # trailing_failures unset then).
        trailing = summary.trailing_failures if summary.successes else summary.failures
        if earlier:
            if not self.successes:
                self.trailing_failures += trailing
        elif summary.successes:
            self.trailing_failures = trailing
        else:
            self.trailing_failures += trailing
        self.successes += summary.successes
        self.failures += summary.failures
        self.rejected += summary.rejected
        if self.probes_of(summary.probe_generation):
            self.probe_successes += summary.probe_successes
            self.probe_failures += summary.probe_failures
            self.probes_released += summary.probes_released
        self.recovery_attempts += summary.recovery_attempts
        self.recovery_successes += summary.recovery_successes
        self.errors_by_type.update(dict(summary.errors_by_type))
        self.errors_by_operation.update(dict(summary.errors_by_operation))
        self.rejected_by_reason.update(dict(summary.rejected_by_reason))
        self.fallbacks_served += summary.fallbacks_served
        self.fallbacks_failed += summary.fallbacks_failed

    def probes_of(self, generation: int) -> bool:
        """Make the probe counts those of breaker ``generation``; False when that one is
        older than what is counted (its probes no longer matter: leave them out)."""
        if generation == self.probe_generation:
            return True
        if generation < self.probe_generation:
            return False  # the control plane granted a later generation: it moved on
        self.probe_successes = self.probe_failures = self.probes_released = 0
        self.probe_generation = generation
        return True

    def give_back(self, generation: int, count: int) -> None:
        """Unused probe permits of breaker ``generation`` go back to the fleet."""
        if count and self.probes_of(generation):
            self.probes_released += count

    def to_proto(self, service: str) -> pb.OutcomeSummary:
        return pb.OutcomeSummary(
            service=service,
            successes=self.successes,
            failures=self.failures,
            trailing_failures=self.trailing_failures,
            errors_by_type=dict(self.errors_by_type),
            rejected=self.rejected,
            probe_successes=self.probe_successes,
            probe_failures=self.probe_failures,
            recovery_attempts=self.recovery_attempts,
            recovery_successes=self.recovery_successes,
            probes_released=self.probes_released,
            errors_by_operation=dict(self.errors_by_operation),
            rejected_by_reason=dict(self.rejected_by_reason),
            fallbacks_served=self.fallbacks_served,
            fallbacks_failed=self.fallbacks_failed,
            probe_generation=self.probe_generation,
        )


class UnackedBatches:
    """Outcome batches sent but not yet acknowledged, to send again after a broken stream.

    A batch goes again as it was, with its sequence number, so the control plane can tell
    it from a new one and count it once. Bounded: past ``limit`` batches the oldest are given
    up and counted; the count travels in the next batch's ``dropped``. Safe to use from a
    sender and a receiver thread.
    """

    def __init__(self, limit: int = 1000, series: str | None = None) -> None:
        self.limit = limit
        #: Names this numbering (sent in the hello): sequences start again in each process.
        self.series = series or uuid.uuid4().hex
        self._sequence = 0
        self._pending: dict[int, pb.OutcomeBatch] = {}
        self._lock = threading.Lock()
        self.dropped = 0
        self._reported = 0

    def batch(
        self, summaries: list[pb.OutcomeSummary], origin: pb.OutcomeOrigin | None = None
    ) -> pb.OutcomeBatch:
        """The next batch of ``summaries`` (passed on for ``origin``), kept until acknowledged."""
        with self._lock:
            self._sequence += 1
            while len(self._pending) >= self.limit:
                self.dropped += len(self._pending.pop(min(self._pending)).summaries)
            dropped, self._reported = self.dropped - self._reported, self.dropped
            batch = pb.OutcomeBatch(
                sequence=self._sequence, summaries=summaries, dropped=dropped, origin=origin
            )
            self._pending[self._sequence] = batch
            return batch

    def ack(self, sequence: int) -> None:
        with self._lock:
            for done in [s for s in self._pending if s <= sequence]:
                del self._pending[done]

    def __len__(self) -> int:
        return len(self._pending)

    def resend(self) -> list[pb.OutcomeBatch]:
        """Every unacknowledged batch, oldest first, as first sent (kept until acknowledged)."""
        with self._lock:
            return [self._pending[sequence] for sequence in sorted(self._pending)]


class ServiceState:
    """One service as this agent sees it. Limits are per agent; the breaker is the fleet's."""

    def __init__(self, name: str, policy: ServicePolicy, now: float) -> None:
        self.name = name
        #: The resource name of the service's request rate limit.
        self.requests_resource = f"{name}.requests"
        self.lock = threading.Lock()
        self.policy = policy
        self.fleet: FleetBreaker | None = None
        self.local = CircuitBreaker(name, policy, now)
        self.bucket = TokenBucket(policy.rate_limit_requests, policy.rate_limit_window_secs, now)
        self.quotas = {q.resource: TokenBucket(q.limit, q.window_secs, now) for q in policy.quotas}
        self.bulkhead = Bulkhead(policy.max_concurrent)
        self.budget = self._budget(policy)
        #: Fleet-shared limits this agent spends by lease (resource -> budget).
        self.leased: dict[str, LeasedBudget] = {}
        self._lease_budgets(policy, now)
        self.permits = ProbePermits()
        self.local_probes = 0
        self.tally = Tally()
        self.probe_asked_at = -1e9
        #: "llm", "storage" or "other", once known (names the failures).
        self.kind: str | None = None

    def _lease_budgets(self, policy: ServicePolicy, now: float) -> None:
        fleet = policy.fleet
        leased = {}
        for resource, (limit, window) in policy.fleet_resources().items():
            assert fleet is not None
            units = limit * fleet.lease_secs / window
            budget = self.leased.get(resource)
            if budget is None:
                budget = LeasedBudget(units, fleet.lease_secs, fleet.safe_share, now)
            else:
                budget.fleet_units, budget.safe_share = units, fleet.safe_share
            leased[resource] = budget
        self.leased = leased

    @staticmethod
    def _budget(policy: ServicePolicy) -> RetryBudget:
        b = policy.retry_budget
        return RetryBudget(b.ratio, b.min_retries_per_second, b.window_secs)

    def apply_policy(self, policy: ServicePolicy, now: float) -> None:
        with self.lock:
            self._apply_policy(policy, now)

    def _apply_policy(self, policy: ServicePolicy, now: float) -> None:
        old = self.policy
        self.policy = policy
        self.local.update_policy(policy)
        if (old.rate_limit_requests, old.rate_limit_window_secs) != (
            policy.rate_limit_requests,
            policy.rate_limit_window_secs,
        ):
            self.bucket.resize(policy.rate_limit_requests, policy.rate_limit_window_secs, now)
        if old.quotas != policy.quotas:
            quotas = {}
            for q in policy.quotas:
                bucket = self.quotas.get(q.resource)
                if bucket is None:
                    bucket = TokenBucket(q.limit, q.window_secs, now)
                else:
                    bucket.resize(q.limit, q.window_secs, now)
                quotas[q.resource] = bucket
            self.quotas = quotas
        self.bulkhead.limit = policy.max_concurrent
        if old.retry_budget != policy.retry_budget:
            self.budget = self._budget(policy)
        if old.fleet != policy.fleet or old.fleet_resources() != policy.fleet_resources():
            self._lease_budgets(policy, now)

    def take_permit(self, now: float) -> FleetProbe | None:
        """Use one fleet probe permit, if one is held for the breaker's generation and
        not expired: the probe, to count its outcome for that generation."""
        fleet = self.fleet
        if fleet is None:
            return None
        with self.lock:
            taken, back = self.permits.take(fleet.generation, now)
            self.return_permits(back)
            return FleetProbe(fleet.generation) if taken else None

    def return_permits(self, back: list[GiveBack]) -> None:
        """Count unused permits as given back in the next outcome batch (lock held)."""
        for unused in back:
            self.tally.give_back(unused.generation, unused.count)

    def drain(self, now: float | None = None) -> Tally | None:
        """The outcomes so far (with permits that lapsed unused), and a fresh tally for
        what follows (counting probes for the same generation)."""
        with self.lock:
            if now is not None:
                self.return_permits(self.permits.lapse(now))
            tally = self.tally
            if tally.empty():
                return None
            self.tally = Tally()
            self.tally.probe_generation = tally.probe_generation
            return tally


class LocalView:
    """Policies, breaker states and limits of every service this agent calls.

    Args:
        policies: policies known without a control plane (a config file, code); a
            service in neither gets the seed's defaults.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        policies: Mapping[str, ServicePolicy] | Callable[[str], ServicePolicy] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self._base: Callable[[str], ServicePolicy]
        if policies is None:
            self._base = default_policy
        elif callable(policies):
            self._base = policies
        else:
            known = dict(policies)
            self._base = lambda name: known.get(name) or default_policy(name)
        self._pushed: dict[str, ServicePolicy] = {}
        self.services: dict[str, ServiceState] = {}
        self._create = threading.Lock()
        #: True while a Connect stream is up and its snapshot applied.
        self.connected = False

    def get(self, name: str) -> ServiceState:
        state = self.services.get(name)
        if state is None:
            with self._create:
                state = self.services.get(name)
                if state is None:
                    state = ServiceState(name, self.policy_of(name), self.clock())
                    self.services[name] = state
        return state

    def policy_of(self, name: str) -> ServicePolicy:
        return self._pushed.get(name) or self._base(name)

    # -- written by the control-plane connection -------------------------------

    def set_policy(self, name: str, policy: ServicePolicy | None) -> None:
        """A policy from the control plane; None = deleted there (back to the base)."""
        if policy is None:
            self._pushed.pop(name, None)
        else:
            self._pushed[name] = policy
        state = self.services.get(name)
        if state is not None:
            state.apply_policy(self.policy_of(name), self.clock())

    def replace_policies(self, policies: Mapping[str, ServicePolicy]) -> None:
        """A snapshot: exactly these policies come from the control plane now."""
        for name in set(self._pushed) - set(policies):
            self.set_policy(name, None)
        for name, policy in policies.items():
            if self._pushed.get(name) != policy:
                self.set_policy(name, policy)

    def apply_snapshot(
        self, policies: Mapping[str, ServicePolicy], breakers: Sequence[pb.Breaker], *, partial: bool = False
    ) -> None:
        """The control plane's whole fleet state, replacing what was held: a breaker it
        does not list is not in force any more. A ``partial`` snapshot (a control plane that
        has not loaded its store) replaces nothing: only its non-CLOSED breakers apply."""
        if partial:
            for message in breakers:
                if message.state != pb.BREAKER_STATE_CLOSED:
                    self.set_breaker(message)
            return
        self.replace_policies(policies)
        listed = {message.name for message in breakers}
        for message in breakers:
            self.set_breaker(message)
        for name, state in list(self.services.items()):
            if name not in listed and state.fleet is not None:
                with state.lock:
                    state.fleet = None
                    state.permits.forget()

    def fleet_in_force(self, state: ServiceState, now: float) -> FleetBreaker | None:
        """The fleet breaker state that decides ``state``'s calls now, if any: the last one
        pushed while connected; when not, only an OPEN with time left or an operator's
        state (fail static) — the local breaker decides the rest."""
        fleet = state.fleet
        if fleet is None or self.connected or fleet.state in _STICKY:
            return fleet
        if fleet.state is BreakerState.OPEN and fleet.open_until > now:
            return fleet
        return None

    def set_breaker(self, message: pb.Breaker) -> None:
        now = self.clock()
        state = self.get(message.name)
        remaining = message.open_remaining.ToNanoseconds() / 1e9
        fleet = FleetBreaker(
            BreakerState(message.state), message.failures, now + remaining, message.generation
        )
        previous = state.fleet
        state.fleet = fleet
        if previous is None or previous.generation != fleet.generation:
            with state.lock:
                state.return_permits(state.permits.supersede(fleet.generation))
        if fleet.state in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED, BreakerState.DISABLED):
            # The fleet's verdict supersedes what this agent saw alone.
            with state.lock:
                if state.local.state is not BreakerState.CLOSED:
                    state.local.force(now, BreakerState.CLOSED, "closed by the fleet")

    def grant(self, grant: pb.ProbeGrant) -> None:
        """Probe permits from the control plane. One for an earlier HALF_OPEN goes back;
        one for a later generation than this agent knows is kept (on a follower replica
        the relayed grant can arrive before the breaker's new state)."""
        state = self.get(grant.service)
        fleet = state.fleet
        now = self.clock()
        expiry = now + grant.ttl.ToNanoseconds() / 1e9
        known = fleet.generation if fleet is not None else None
        with state.lock:
            back = state.permits.add(grant.generation, max(1, grant.permits), expiry, known, now)
            state.return_permits(back)

    def apply_lease(self, lease: pb.CapacityLease) -> None:
        state = self.get(lease.service)
        now = self.clock()
        with state.lock:
            budget = state.leased.get(lease.resource)
            if budget is None:
                return  # not fleet-shared here (yet): the policy will follow
            budget.apply(
                lease.period,
                lease.units,
                now + lease.starts_in.ToNanoseconds() / 1e9,
                lease.period_length.ToNanoseconds() / 1e9,
                lease.agents,
                lease.fleet_units,
                lease.epoch,
            )

    def give_back_permits(self) -> None:
        """The agent is closing: its unused probe permits go back with the last batch."""
        for state in list(self.services.values()):
            with state.lock:
                state.return_permits(state.permits.lapse(float("inf")))

    def forget_fleet(self) -> None:
        """The control plane is gone: its probe permits end; its breaker states stay in
        force as :meth:`fleet_in_force` says."""
        self.connected = False
        for state in list(self.services.values()):
            with state.lock:
                state.permits.forget()
