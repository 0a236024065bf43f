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

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .breaker import BreakerState, CircuitBreaker
from .clock_offset import spent
from .fleet_limits import LeasedBudget
from .fleet_retries import (
    FleetRetryBudget,
    calls_resource,
    failures_resource,
    retries_resource,
    retry_resources,
)
from .limits import Bulkhead, RetryBudget, TokenBucket
from .policy import ServicePolicy, default_policy, endpoint_breaker, service_of
from .probes import FleetProbe, GiveBack, ProbePermits, RunningProbes, hold_end, last_use
from .shadow import ShadowLimits

__all__ = ["EndpointState", "FleetBreaker", "LocalView", "ServiceState", "Tally"]


#: Operator states: in force until a control plane says otherwise.
def _forget_every(policy: ServicePolicy) -> float:
    """How often calls past the endpoint cap look for idle endpoints to make room."""
    return max(0.05, min(1.0, policy.endpoint_idle_secs / 10))


_STICKY = frozenset({BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED, BreakerState.DISABLED})
#: The fleet's probing states: a HALF_OPEN, or an OPEN whose wait is over (the control
#: plane moves it to HALF_OPEN).
_PROBING = frozenset({BreakerState.HALF_OPEN, BreakerState.OPEN})

#: How much of a pushed breaker's reason is kept (it goes into refusals' messages).
_REASON_KEPT = 1024
#: The control plane's probe permit TTL until a grant says otherwise (server/engine.py).
PROBE_TTL_SECS = 5.0
#: The most of a grant's TTL that lengthens the hold of a fleet HALF_OPEN after the link
#: drops: a peer granting a TTL of days must not keep the agent refusing for days.
MOST_PROBE_TTL_SECS = 60.0
#: Bounds on the breaker generations an agent says in its hello (the control plane takes
#: hellos of up to 64 KiB and 1024 of them).
HELD_GENERATIONS_BYTES = 16 * 1024
HELD_GENERATIONS_MOST = 1024


@dataclass(frozen=True, slots=True)
class FleetBreaker:
    """A breaker as the control plane last said, with times on this process's clock."""

    state: BreakerState
    failures: int
    open_until: float
    generation: int
    #: Which push this was (:attr:`LocalView.pushes` when it came).
    push: int = 0
    #: Since when the control plane has said it can grant no probe permit for this
    #: HALF_OPEN (``Breaker.no_grants``); None: it has not.
    no_grants_since: float | None = None
    #: Why it is in this state, as the control plane said (an operator's reason).
    reason: str = ""


def _uint32(count: int) -> int:
    """A count as a uint32 field takes it: past the field's range it is clamped (a spool
    may count 2**40 records lost on a hand-edited disk), never raised in the report path."""
    return min(max(count, 0), 2**32 - 1)


class Tally:
    """Outcomes of one service's calls since the last batch sent to the control plane."""

    __slots__ = (
        "endpoints_over_cap",
        "errors_by_operation",
        "errors_by_type",
        "failures",
        "fallbacks_failed",
        "fallbacks_served",
        "probe_failures",
        "probe_generation",
        "probe_grants_failed",
        "probe_grants_succeeded",
        "probe_successes",
        "probes_released",
        "probes_running",
        "recovery_attempts",
        "recovery_successes",
        "rejected",
        "rejected_by_reason",
        "retries",
        "shadow_calls",
        "shadow_rejected_by_reason",
        "shadow_retries",
        "slow_calls",
        "spool_dropped",
        "spool_held",
        "spool_replayed",
        "spooled",
        "successes",
        "timed_calls",
        "trailing_failures",
    )

    def __init__(self) -> None:
        self.successes = self.failures = self.trailing_failures = self.rejected = 0
        self.probe_successes = self.probe_failures = self.probes_released = 0
        #: The breaker generation the probe counts belong to (0 = not said).
        self.probe_generation = 0
        #: The grant of each probe result counted (see OutcomeSummary.probe_grants).
        self.probe_grants_failed: list[int] = []
        self.probe_grants_succeeded: list[int] = []
        #: Probes still running under grants of the stream before (said once per stream).
        self.probes_running: list[int] = []
        self.recovery_attempts = self.recovery_successes = 0
        self.errors_by_type: Counter[str] = Counter()
        self.errors_by_operation: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.fallbacks_served = self.fallbacks_failed = 0
        #: What a candidate policy in shadow mode would have done (see :mod:`.shadow`).
        self.shadow_calls = self.shadow_retries = self.retries = 0
        self.shadow_rejected_by_reason: Counter[str] = Counter()
        self.slow_calls = self.timed_calls = self.endpoints_over_cap = 0
        self.spooled = self.spool_replayed = self.spool_dropped = self.spool_held = 0

    def empty(self) -> bool:
        return not (
            self.successes or self.failures or self.rejected or self.probe_successes
            or self.probe_failures or self.probes_released or self.recovery_attempts
            or self.probes_running
            or self.fallbacks_served or self.fallbacks_failed or self.shadow_calls
            or self.retries or self.shadow_retries or self.timed_calls
            or self.endpoints_over_cap
            or self.spooled or self.spool_replayed or self.spool_dropped or self.spool_held
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
            named = len(self.probe_grants_failed) + len(self.probe_grants_succeeded) == (
                self.probe_failures + self.probe_successes
            )
            if named and len(summary.probe_grants) == summary.probe_failures + summary.probe_successes:
                self.probe_grants_failed += summary.probe_grants[: summary.probe_failures]
                self.probe_grants_succeeded += summary.probe_grants[summary.probe_failures :]
            else:  # some result not named: none is (the control plane counts them by permits)
                self.probe_grants_failed, self.probe_grants_succeeded = [], []
            self.probe_successes += summary.probe_successes
            self.probe_failures += summary.probe_failures
            self.probes_released += summary.probes_released
        self.probes_running = sorted({*self.probes_running, *summary.probes_running})
        self.recovery_attempts += summary.recovery_attempts
        self.recovery_successes += summary.recovery_successes
        self.errors_by_type.update(dict(summary.errors_by_type))
        self.errors_by_operation.update(dict(summary.errors_by_operation))
        self.rejected_by_reason.update(dict(summary.rejected_by_reason))
        self.fallbacks_served += summary.fallbacks_served
        self.fallbacks_failed += summary.fallbacks_failed
        self.shadow_calls += summary.shadow_calls
        self.shadow_retries += summary.shadow_retries
        self.retries += summary.retries
        self.shadow_rejected_by_reason.update(dict(summary.shadow_rejected_by_reason))
        self.slow_calls += summary.slow_calls
        self.timed_calls += summary.timed_calls
        self.endpoints_over_cap += summary.endpoints_over_cap
        self.spooled += summary.spooled
        self.spool_replayed += summary.spool_replayed
        self.spool_dropped += summary.spool_dropped
        self.spool_held += summary.spool_held

    def probes_of(self, generation: int) -> bool:
        """Make the probe counts those of breaker ``generation``; False when that one is
        older than what is counted (its probes no longer matter: leave them out)."""
        if generation == self.probe_generation:
            return True
        if generation < self.probe_generation:
            return False  # the control plane granted a later generation: it moved on
        self.probe_successes = self.probe_failures = self.probes_released = 0
        self.probe_grants_failed, self.probe_grants_succeeded = [], []
        self.probe_generation = generation
        return True

    def follow(self, generation: int) -> None:
        """The breaker in force is of ``generation`` now: probe counts of any other are
        of a HALF_OPEN that is over. Generations are not ordered across a leader change —
        a decision from memory that etcd never stored may have counted above the one that
        stands — so one below those counted is the one to count for when it is in force."""
        if generation != self.probe_generation:
            self.probe_successes = self.probe_failures = self.probes_released = 0
            self.probe_grants_failed, self.probe_grants_succeeded = [], []
            self.probe_generation = generation

    def probe_ended(self, probe: str, failed: bool) -> None:
        """A fleet probe's result, for the generation and grant of its permit (one of a
        HALF_OPEN that is over no longer counts: left out)."""
        if not self.probes_of(getattr(probe, "generation", 0)):
            return
        number = getattr(probe, "number", 0)
        if failed:
            self.probe_failures += 1
            self.probe_grants_failed.append(number)
        else:
            self.probe_successes += 1
            self.probe_grants_succeeded.append(number)

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
            spooled=_uint32(self.spooled),
            spool_replayed=_uint32(self.spool_replayed),
            spool_dropped=_uint32(self.spool_dropped),
            spool_held=_uint32(self.spool_held),
            probe_generation=self.probe_generation,
            probe_grants=self._grants(),
            probes_running=self.probes_running,
            shadow_calls=self.shadow_calls,
            shadow_retries=self.shadow_retries,
            retries=self.retries,
            shadow_rejected_by_reason=dict(self.shadow_rejected_by_reason),
            slow_calls=self.slow_calls,
            timed_calls=self.timed_calls,
            endpoints_over_cap=self.endpoints_over_cap,
        )

    def _grants(self) -> list[int]:
        grants = self.probe_grants_failed + self.probe_grants_succeeded
        if len(grants) != self.probe_failures + self.probe_successes or not all(grants):
            return []  # not one per result: the control plane counts them by permits
        return grants


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
        #: Batches sent ahead of lower-numbered ones (see :meth:`batch`), not acknowledged yet.
        self._ahead: set[int] = set()
        self._lock = threading.Lock()
        self.dropped = 0
        self._reported = 0

    def batch(
        self,
        summaries: list[pb.OutcomeSummary],
        origin: pb.OutcomeOrigin | None = None,
        *,
        ahead: bool = False,
    ) -> pb.OutcomeBatch:
        """The next batch of ``summaries`` (passed on for ``origin``), kept until acknowledged.
        ``ahead``: sent ahead of the batches pending (sent again behind it): its
        acknowledgement covers only itself, not those numbered lower, which may not have been
        taken when the stream broke."""
        with self._lock:
            self._sequence += 1
            while len(self._pending) >= self.limit:
                oldest = min(self._pending)
                self._ahead.discard(oldest)
                self.dropped += len(self._pending.pop(oldest).summaries)
            if ahead:
                self._ahead.add(self._sequence)
            dropped, self._reported = self.dropped - self._reported, self.dropped
            batch = pb.OutcomeBatch(
                sequence=self._sequence, summaries=summaries, dropped=dropped, origin=origin
            )
            self._pending[self._sequence] = batch
            return batch

    def ack(self, sequence: int) -> None:
        """Batch ``sequence`` was taken, and with it (cumulatively) every batch numbered lower,
        unless it was sent ahead of them."""
        with self._lock:
            if sequence in self._ahead:
                self._ahead.discard(sequence)
                self._pending.pop(sequence, None)
                return
            for done in [s for s in self._pending if s <= sequence]:
                del self._pending[done]
            self._ahead = {s for s in self._ahead if s > sequence}

    def __len__(self) -> int:
        return len(self._pending)

    def resend(self, marked: bool = False) -> list[pb.OutcomeBatch]:
        """Every unacknowledged batch, oldest first, as first sent (kept until acknowledged);
        ``marked``: each summary saying the batch was sent before (``origin_first``), so
        that a follower holding it through a spell without a leader keeps it apart."""
        with self._lock:
            batches = [self._pending[sequence] for sequence in sorted(self._pending)]
        if not marked:
            return batches
        out = []
        for batch in batches:
            again = pb.OutcomeBatch()
            again.CopyFrom(batch)
            for summary in again.summaries:
                summary.origin_first = batch.sequence
            out.append(again)
        return out


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
        #: Fleet-shared limits this agent spends by lease (resource -> budget).
        self.leased: dict[str, LeasedBudget] = {}
        self._lease_budgets(policy, now)
        self.budget = self._budget(policy)
        self.permits = ProbePermits()
        #: The fleet probes running (:class:`.RunningProbes`).
        self.probes = RunningProbes()
        self.local_probes = 0
        self.tally = Tally()
        self.probe_asked_at = -1e9
        #: "llm", "storage" or "other", once known (names the failures).
        self.kind: str | None = None
        #: A candidate policy's limits while one is in shadow mode (never enforced).
        self.shadow: ShadowLimits | None = None
        #: Attempts running while the policy has a slow-call rule, to judge them slow as
        #: soon as they pass its duration (lock held).
        self.running: set[Any] = set()
        #: This service's endpoints with a breaker of their own, by breaker name.
        self.endpoints: dict[str, EndpointState] = {}
        #: When idle endpoints were last looked for to make room past the cap.
        self.forgot_at = -math.inf
        self.last_used = now

    def judge_slow(self, now: float) -> None:
        """Count running attempts that passed the slow-call duration as slow, once each, for
        the fleet and the local breaker (lock held). Probes are judged when they end."""
        rule = self.policy.slow_call
        if not self.running:
            return
        if rule is None:
            self.running.clear()
            return
        slow = 0
        for ticket in list(self.running):
            if now > ticket.deadline + 1.0:  # its end was never reported: stop tracking it
                self.running.discard(ticket)
            elif (
                not ticket.slow
                and ticket.probe is None
                and now - ticket.started >= rule.duration_threshold_secs
            ):
                ticket.slow = True
                slow += 1
        if slow:
            self.tally.slow_calls += slow
            self.tally.timed_calls += slow
            self.local.record_timing(now, slow, slow)

    def _lease_budgets(self, policy: ServicePolicy, now: float) -> None:
        fleet = policy.fleet
        wanted = {}
        limits = policy.fleet_resources()
        for resource, (limit, window) in limits.items():
            assert fleet is not None
            wanted[resource] = (limit * fleet.lease_secs / window, fleet.lease_secs, fleet.safe_share)
        wanted.update(retry_resources(policy))
        leased = {}
        for resource, (units, period, safe_share) in wanted.items():
            # a fleet limit's unleased spending ends; a retry budget falls back to its own
            horizon = fleet.unleased_secs if fleet is not None and resource in limits else None
            budget = self.leased.get(resource)
            if budget is None:
                budget = LeasedBudget(units, period, safe_share, now, horizon)
            else:
                budget.fleet_units, budget.safe_share, budget.unleased_secs = units, safe_share, horizon
            leased[resource] = budget
        self.leased = leased

    def _budget(self, policy: ServicePolicy) -> RetryBudget | FleetRetryBudget:
        b = policy.retry_budget
        local = RetryBudget(b.ratio, b.min_retries_per_second, b.window_secs)
        if not policy.fleet_retry_budget:
            return local
        name = policy.service
        leased = self.leased
        return FleetRetryBudget(
            local,
            leased[retries_resource(name)],
            leased[calls_resource(name)],
            leased[failures_resource(name)],
        )

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
        leases = (old.fleet, old.fleet_resources(), retry_resources(old))
        if leases != (policy.fleet, policy.fleet_resources(), retry_resources(policy)):
            self._lease_budgets(policy, now)
        if (old.retry_budget, old.fleet_retry_budget) != (policy.retry_budget, policy.fleet_retry_budget):
            self.budget = self._budget(policy)

    def take_permit(self, now: float, stream: int = 0) -> FleetProbe | None:
        """Use one fleet probe permit, if one is held for the breaker's generation and
        not expired: the probe, to count its outcome for that generation and grant
        (``stream``: the view's :attr:`LocalView.stream`, the one the permit came over)."""
        fleet = self.fleet
        if fleet is None:
            return None
        with self.lock:
            permit, back = self.permits.take(fleet.generation, now)
            self.return_permits(back)
            if permit is None:
                return None
            probe = FleetProbe(fleet.generation, permit.number, stream, permit.hold_end)
            self.probes.started(probe)
            return probe

    def probe_ended(self, probe: str | None, failed: bool | None) -> None:
        """A fleet probe ended (lock held): its result (``failed``), or None when the
        service was not judged (its permit goes back unused)."""
        self.probes.ended(probe)
        if failed is None:
            self.tally.give_back(getattr(probe, "generation", 0), 1)
        else:
            self.tally.probe_ended(probe or "", failed)

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
                self.judge_slow(now)
            tally = self.tally
            if tally.empty():
                return None
            self.tally = Tally()
            self.tally.probe_generation = tally.probe_generation
            return tally


class EndpointState(ServiceState):
    """One endpoint of a service (``llm_provider/openai/gpt-x``): its own breakers (fleet and
    local), probe permits, outcome tally and slow-call judging, under the service's policy;
    the service's limits (rate limit, quotas, bulkhead, retry budget, leases) and its lock,
    so endpoints share what the service may spend."""

    def __init__(self, name: str, parent: ServiceState, now: float) -> None:
        self.parent = parent
        self.name = name
        self.requests_resource = parent.requests_resource
        self.lock = parent.lock
        self.policy = parent.policy
        self.fleet = None
        self.local = CircuitBreaker(name, parent.policy, now)
        self.permits = ProbePermits()
        #: The fleet probes running (:class:`.RunningProbes`).
        self.probes = RunningProbes()
        self.local_probes = 0
        self.tally = Tally()
        self.probe_asked_at = -1e9
        self.kind = parent.kind
        self.running = set()
        self.endpoints = {}
        self.last_used = now

    # The service's limits, whatever the service's policy made of them since.
    bucket = property(lambda self: self.parent.bucket)  # type: ignore[assignment]
    quotas = property(lambda self: self.parent.quotas)  # type: ignore[assignment]
    bulkhead = property(lambda self: self.parent.bulkhead)  # type: ignore[assignment]
    budget = property(lambda self: self.parent.budget)  # type: ignore[assignment]
    leased = property(lambda self: self.parent.leased)  # type: ignore[assignment]
    shadow = property(lambda self: self.parent.shadow)  # type: ignore[assignment]

    def _apply_policy(self, policy: ServicePolicy, now: float) -> None:
        self.policy = policy
        self.local.update_policy(policy)

    def idle(self, now: float) -> bool:
        """Whether nothing would be lost by forgetting it (lock held): unused for the
        policy's ``endpoint_idle_secs``, no call running or unreported, both breakers
        CLOSED and no probe permit held."""
        fleet = self.fleet
        return (
            now - self.last_used >= self.policy.endpoint_idle_secs
            and not self.running
            and self.tally.empty()
            and not len(self.permits)
            and (fleet is None or fleet.state is BreakerState.CLOSED)
            and self.local.state is BreakerState.CLOSED
        )


class LocalView:
    """Policies, breaker states and limits of every service this agent calls.

    Args:
        policies: policies known without a control plane (a config file, code); a
            service in neither gets the seed's defaults.
        clock: monotonic seconds.
        wall: epoch seconds (only to read when a probe permit's hold ends,
            ``ProbeGrant.hold_until``).
    """

    def __init__(
        self,
        policies: Mapping[str, ServicePolicy] | Callable[[str], ServicePolicy] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self._base: Callable[[str], ServicePolicy]
        if policies is None:
            self._base = default_policy
        elif callable(policies):
            self._base = policies
        else:
            known = dict(policies)
            self._base = lambda name: known.get(name) or default_policy(name)
        self._pushed: dict[str, ServicePolicy] = {}
        #: Candidate policies in shadow mode, from the control plane.
        self._shadows: dict[str, ServicePolicy] = {}
        self.services: dict[str, ServiceState] = {}
        self._create = threading.Lock()
        #: True while a Connect stream is up and its snapshot applied.
        self.connected = False
        #: When the last stream that was up ended (this process's clock).
        self.link_lost_at = -math.inf
        #: Counts the streams to the control plane: one more each time one ends.
        self.stream = 0
        #: How long a fleet probe permit lasts: the TTL of the last grant.
        self.probe_ttl = PROBE_TTL_SECS
        #: Breaker states pushed so far, and how many there were when the stream's snapshot
        #: was partial (None: it was whole): states from before it are not restated.
        self.pushes = 0
        self.partial_at: int | None = None

    def held_generations(self, names: Iterable[str] = ()) -> dict[str, int]:
        """The generation of each breaker of ``names`` (none named: of every breaker held)
        as the control plane last said, those with one known, within
        :data:`HELD_GENERATIONS_BYTES` (what a hello carries)."""
        found: dict[str, int] = {}
        size = 0
        for name in list(names) or list(self.services):
            state = self.services.get(name)
            fleet = state.fleet if state is not None else None
            if fleet is None or not fleet.generation:
                continue
            size += len(name.encode()) + 16
            if size > HELD_GENERATIONS_BYTES or len(found) >= HELD_GENERATIONS_MOST:
                break
            found[name] = fleet.generation
        return found

    def get(self, name: str) -> ServiceState:
        """The state of a service, or of an endpoint's breaker (``service/endpoint``)."""
        state = self.services.get(name)
        if state is None:
            parent = self.get(service_of(name)) if "/" in name else None
            with self._create:
                state = self.services.get(name)
                if state is None:
                    if parent is None:
                        state = ServiceState(name, self.policy_of(name), self.clock())
                        candidate = self._shadows.get(name)
                        if candidate is not None:
                            state.shadow = ShadowLimits(candidate, self.clock())
                    else:
                        state = parent.endpoints[name] = EndpointState(name, parent, self.clock())
                    self.services[name] = state
        return state

    def endpoint(self, service: str, endpoint: str) -> ServiceState:
        """The state calls to ``endpoint`` of ``service`` are decided by: the endpoint's own,
        or the service's when the service has ``max_endpoints`` endpoints already (the
        call is counted as over the cap). Idle endpoints are forgotten to make room, at most
        every ``_forget_every`` (looking costs a pass over every endpoint). With
        ``max_endpoints`` 0 there are no endpoint breakers: the service's decides, uncounted."""
        now = self.clock()
        state = self.services.get(endpoint_breaker(service, endpoint))
        if state is None:
            parent = self.get(service)
            cap = parent.policy.max_endpoints
            if not cap:
                return parent
            if len(parent.endpoints) >= cap and now - parent.forgot_at >= _forget_every(parent.policy):
                parent.forgot_at = now
                self.forget_idle(now, parent)
            if len(parent.endpoints) >= cap:
                with parent.lock:
                    parent.tally.endpoints_over_cap += 1
                return parent
            state = self.get(endpoint_breaker(service, endpoint))
        state.last_used = now
        return state

    def forget_idle(self, now: float, parent: ServiceState | None = None) -> int:
        """Forget idle endpoints (see :meth:`EndpointState.idle`) of ``parent``, or of every
        service; returns how many. A later call or push starts one over."""
        parents = [parent] if parent is not None else [s for s in list(self.services.values()) if s.endpoints]
        forgotten = 0
        for service in parents:
            with self._create, service.lock:
                for name, state in list(service.endpoints.items()):
                    if state.idle(now):
                        del service.endpoints[name]
                        self.services.pop(name, None)
                        forgotten += 1
        return forgotten

    def policy_of(self, name: str) -> ServicePolicy:
        """The policy of a service; an endpoint's breaker follows its service's."""
        name = service_of(name)
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
            policy = self.policy_of(name)
            state.apply_policy(policy, self.clock())
            for endpoint in list(state.endpoints.values()):
                endpoint.apply_policy(policy, self.clock())

    def set_shadow(self, name: str, policy: ServicePolicy | None) -> None:
        """A candidate policy in shadow mode for ``name``; None = cleared. A new or changed
        candidate starts with full buckets and no places taken."""
        if policy is None:
            self._shadows.pop(name, None)
        else:
            self._shadows[name] = policy
        state = self.services.get(name)
        if state is not None:
            with state.lock:
                state.shadow = None if policy is None else ShadowLimits(policy, self.clock())

    def shadow_of(self, name: str) -> ServicePolicy | None:
        return self._shadows.get(name)

    def replace_shadows(self, policies: Mapping[str, ServicePolicy]) -> None:
        """A snapshot: exactly these candidates are in shadow mode now."""
        for name in set(self._shadows) - set(policies):
            self.set_shadow(name, None)
        for name, policy in policies.items():
            if self._shadows.get(name) != policy:
                self.set_shadow(name, policy)

    def replace_policies(self, policies: Mapping[str, ServicePolicy]) -> None:
        """A snapshot: exactly these policies come from the control plane now."""
        for name in set(self._pushed) - set(policies):
            self.set_policy(name, None)
        for name, policy in policies.items():
            if self._pushed.get(name) != policy:
                self.set_policy(name, policy)

    def apply_snapshot(
        self,
        policies: Mapping[str, ServicePolicy],
        breakers: Sequence[pb.Breaker],
        *,
        partial: bool = False,
        shadows: Mapping[str, ServicePolicy] | None = None,
    ) -> None:
        """The control plane's whole fleet state, replacing what was held: a breaker it
        does not list is not in force any more. A ``partial`` snapshot (a control plane that
        has not loaded its store) replaces nothing: only its non-CLOSED breakers apply, and
        what it does not restate stays in force as if the link were still down (see
        :meth:`fleet_in_force`)."""
        self.partial_at = self.pushes if partial else None
        self._say_running()
        if partial:
            for message in breakers:
                if message.state != pb.BREAKER_STATE_CLOSED:
                    self.set_breaker(message)
            return
        self.replace_policies(policies)
        if shadows is not None:
            self.replace_shadows(shadows)
        listed = {message.name for message in breakers}
        for message in breakers:
            self.set_breaker(message)
        for name, state in list(self.services.items()):
            if name not in listed and state.fleet is not None:
                with state.lock:
                    state.fleet = None
                    state.permits.forget()

    def _say_running(self) -> None:
        """A new stream is up: the probes still running under permits of one before are
        said in the next batch, so the control plane counts them in flight."""
        for state in list(self.services.values()):
            with state.lock:
                running = state.probes.before(self.stream)
                if running:
                    state.tally.probes_running = running

    def running_said(self) -> list[pb.OutcomeSummary]:
        """The probes of a stream before still running, as said by :meth:`_say_running`,
        taken out of the tallies: sent first on the new stream, ahead of the batches sent
        again (a refusal in one of those makes the agent one that asks, and the control
        plane would grant it a permit before it knew of the probe)."""
        said = []
        for name, state in list(self.services.items()):
            with state.lock:
                if state.tally.probes_running:
                    said.append(pb.OutcomeSummary(service=name, probes_running=state.tally.probes_running))
                    state.tally.probes_running = []
        return said

    def probing(self) -> bool:
        """Whether a fleet breaker held is OPEN or HALF_OPEN: a permit of it may have gone
        with the stream before (unused, or granted as the stream broke), which the control
        plane counts until this agent's first batch on the new stream says what it runs.
        That batch is then sent even when it says nothing (:meth:`running_said`)."""
        return any(s.fleet is not None and s.fleet.state in _PROBING for s in list(self.services.values()))

    def fleet_in_force(self, state: ServiceState, now: float) -> FleetBreaker | None:
        """The fleet breaker state that decides ``state``'s calls now, if any: the last one
        pushed while connected; when not (fail static), an OPEN with time left, an
        operator's state, and a HALF_OPEN (or an OPEN whose wait is over) until the link
        has been down for the probe TTL plus the policy's timeout — every probe the fleet
        permitted before the link broke has ended by then; it runs no call meanwhile, as
        the permits ended with the link. The local breaker decides the rest. A state held
        from before a partial snapshot (a control plane that has not read its store, and
        grants no permit for it) is held by the same rules: connected to it is not yet back.
        So is a HALF_OPEN the control plane said it can grant no permit for
        (``no_grants``), from the first push that said so until one that does not (or an
        OPEN whose wait was over when pushed so: a follower replica may know the breaker
        only so while the leader holds it HALF_OPEN).
        """
        fleet = state.fleet
        if fleet is None or fleet.state in _STICKY:
            return fleet
        hold = self.probe_ttl + state.policy.timeout_secs
        paused = fleet.no_grants_since
        if self.connected and (self.partial_at is None or fleet.push > self.partial_at):
            if paused is not None and now >= paused + hold:
                return None  # no permit can come: held as after a lost link, then local
            return fleet
        if fleet.state is BreakerState.OPEN and fleet.open_until > now:
            return fleet
        held_from = paused if paused is not None else self.link_lost_at  # no grant since either
        if fleet.state in _PROBING and now < held_from + hold:
            return fleet
        return None

    def set_breaker(self, message: pb.Breaker) -> None:
        if (
            message.state == pb.BREAKER_STATE_CLOSED
            and "/" in message.name
            and message.name not in self.services
        ):
            return  # a CLOSED endpoint this agent does not hold: nothing to enforce, nothing to keep
        now = self.clock()
        state = self.get(message.name)
        remaining = message.open_remaining.ToNanoseconds() / 1e9
        self.pushes += 1
        fleet = FleetBreaker(
            BreakerState(message.state),
            message.failures,
            now + remaining,
            message.generation,
            self.pushes,
            reason=message.reason[:_REASON_KEPT],
        )
        previous = state.fleet
        waited = fleet.state is BreakerState.OPEN and remaining <= 0
        if message.no_grants and (fleet.state is BreakerState.HALF_OPEN or waited):
            # held from the first push that said so: no permit was granted since
            kept = previous.no_grants_since if previous is not None else None
            fleet = replace(fleet, no_grants_since=now if kept is None else kept)
        state.fleet = fleet
        if previous is None or previous.generation != fleet.generation:
            with state.lock:
                if fleet.generation < state.tally.probe_generation:
                    # a generation that stood after all, or a breaker started over (the
                    # store lost it) while none was held here: counted for from now on
                    state.tally.follow(fleet.generation)
                state.return_permits(state.permits.supersede(fleet.generation))
        if fleet.state in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED, BreakerState.DISABLED):
            # The fleet's verdict supersedes what this agent saw alone.
            with state.lock:
                if state.local.state is not BreakerState.CLOSED:
                    state.local.force(now, BreakerState.CLOSED, "closed by the fleet")

    def grant(self, grant: pb.ProbeGrant, offset: float | None = None) -> None:
        """Probe permits from the control plane. One for an earlier HALF_OPEN goes back;
        one for a later generation than this agent knows is kept (on a follower replica
        the relayed grant can arrive before the breaker's new state); one delivered twice
        is taken once (see :class:`GrantsTaken`). A probe under it ends by the granter's
        hold (``hold_until``, when said), and it is used only while enough of that hold is
        left (:func:`.probes.last_use`). ``offset`` takes the sender's wall clock to
        :attr:`clock` (:class:`.ClockOffset`; None: not known, the wall clocks are taken
        to agree)."""
        state = self.get(grant.service)
        fleet = state.fleet
        now = self.clock()
        ttl = grant.ttl.ToNanoseconds() / 1e9
        hold = None
        if grant.HasField("hold_until"):
            hold = hold_end(now, self.wall(), grant.hold_until.ToNanoseconds() / 1e9, offset)
        # a probe begun by then ends within the granter's hold
        expiry = last_use(now, ttl, hold, state.policy.timeout_secs)
        if expiry <= now:
            spent(grant, now - expiry, offset)
        # (a grant that says its hold may come from a relay, with only the TTL left of it:
        # the TTL kept here is never taken for less from one)
        if (ttl > 0 and hold is None) or ttl > self.probe_ttl:
            self.probe_ttl = min(ttl, MOST_PROBE_TTL_SECS)
        known = fleet.generation if fleet is not None else None
        with state.lock:
            identity = (grant.series, grant.number)
            back = state.permits.add(
                grant.generation,
                max(1, grant.permits),
                expiry,
                known,
                now,
                identity,
                math.inf if hold is None else hold,
            )
            state.return_permits(back)

    def apply_lease(self, lease: pb.CapacityLease) -> None:
        state = self.get(lease.service)
        now = self.clock()
        with state.lock:
            budget = state.leased.get(lease.resource)
            if budget is None:
                return  # not fleet-shared here (yet): the policy will follow
            budget.receive(
                lease.period,
                lease.units,
                lease.starts_in.ToNanoseconds() / 1e9,
                now,
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
        if self.connected:
            self.link_lost_at = self.clock()
        self.connected = False
        self.stream += 1  # the permits of the stream before went with it
        for state in list(self.services.values()):
            with state.lock:
                state.permits.forget()
                for budget in state.leased.values():
                    budget.placement.link_lost()
