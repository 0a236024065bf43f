"""Admission: may an attempt go now? The breaker's gate, the rate limit, quotas and the
bulkhead, decided from the local view into a value — :class:`Admitted` or :class:`Refused`.

The fleet breaker's states are objects in pybreaker's manner: each state's gate says what
an attempt meets in it. Nothing here waits or touches the network (asking the control
plane for a probe permit only queues a message).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .breaker import BreakerState, operator_reason
from .connection import ControlPlaneConnection
from .errors import CircuitBreakerOpen, ConfigurationError, MissionControlError, ResourceExhausted
from .fleet_limits import LeasedBudget
from .limits import TokenBucket
from .shadow import ShadowLimits
from .view import FleetBreaker, LocalView, ServiceState

__all__ = ["Admission", "Admitted", "Refused", "Ticket", "rate_refused"]

#: How soon to look again when a HALF_OPEN breaker has no permit for this agent yet.
PROBE_WAIT = 0.05


class Admitted:
    """The attempt may go; ``probe`` says as what: "fleet", "local" or None (ordinary)."""

    __slots__ = ("probe",)

    def __init__(self, probe: str | None) -> None:
        self.probe = probe


class Refused:
    """The attempt may not go: the error for the caller and which gate refused
    ("breaker", "rate_limit", "quota" or "bulkhead")."""

    __slots__ = ("error", "reason")

    def __init__(self, error: MissionControlError, reason: str) -> None:
        self.error = error
        self.reason = reason

    @property
    def wait(self) -> float | None:
        """Seconds after which the same attempt could go; None = not known."""
        return self.error.retry_after


ORDINARY = Admitted(None)
FLEET_PROBE = Admitted("fleet")
LOCAL_PROBE = Admitted("local")


class Ticket:
    """One admitted target of a call: its service, deadline and probe permit, if any."""

    __slots__ = (
        "deadline",
        "kind",
        "operation",
        "probe",
        "service",
        "shadow",
        "slow",
        "started",
        "state",
        "timeout",
    )

    def __init__(
        self,
        state: ServiceState,
        operation: str,
        kind: str,
        deadline: float,
        timeout: float,
        probe: str | None,
    ) -> None:
        self.state = state
        self.service = state.name
        self.operation = operation
        self.kind = kind
        self.deadline = deadline
        self.timeout = timeout
        self.probe = probe
        #: The candidate policy's limits when the call holds a place in its bulkhead.
        self.shadow: ShadowLimits | None = None
        #: When the current attempt started, and whether it was judged slow yet.
        self.started = deadline - timeout
        self.slow = False


class _Gate:
    """What an attempt meets in one fleet breaker state."""

    def before_call(self, admission: Admission, state: ServiceState, fleet: FleetBreaker, now: float):  # type: ignore[no-untyped-def]
        return ORDINARY


class _HalfOpen(_Gate):
    def before_call(self, admission, state, fleet, now):  # type: ignore[no-untyped-def]
        probe = state.take_permit(now, admission.view.stream)
        if probe is not None:  # "fleet", with the generation its outcome counts for
            return Admitted(probe)
        admission.ask_probe(state)
        return _open(state, fleet.failures, PROBE_WAIT, "HALF_OPEN")


class _Open(_Gate):
    def before_call(self, admission, state, fleet, now):  # type: ignore[no-untyped-def]
        if fleet.open_until > now:
            return _open(state, fleet.failures, fleet.open_until - now)
        admission.ask_probe(state)
        return _open(state, fleet.failures, PROBE_WAIT)


class _ForcedOpen(_Gate):
    def before_call(self, admission, state, fleet, now):  # type: ignore[no-untyped-def]
        reason = operator_reason(fleet.state, fleet.reason)
        return _open(state, fleet.failures, None, "FORCED_OPEN", reason)


_GATES: dict[BreakerState, _Gate] = {
    BreakerState.CLOSED: _Gate(),
    BreakerState.FORCED_CLOSED: _Gate(),
    BreakerState.DISABLED: _Gate(),
    BreakerState.HALF_OPEN: _HalfOpen(),
    BreakerState.OPEN: _Open(),
    BreakerState.FORCED_OPEN: _ForcedOpen(),
}
#: Operator states hold while the control plane is out of reach (fail static).


def _open(
    state: ServiceState, failures: int, wait: float | None, breaker: str = "OPEN", reason: str = ""
) -> Refused:
    """A refusal by a breaker in state ``breaker`` (its name), with an operator's ``reason``."""
    error = CircuitBreakerOpen(state.name, failures, retry_after=wait, state=breaker, reason=reason)
    return Refused(error, "breaker")


class Admission:
    """Decides attempts from ``view``; asks ``connection`` for probe permits."""

    def __init__(self, view: LocalView, connection: ControlPlaneConnection | None) -> None:
        self.view = view
        self.connection = connection

    def ask_probe(self, state: ServiceState) -> None:
        # Not while a probe under a permit of the stream before still runs: the control
        # plane counts it in flight once told, and a second permit would run beside it.
        if self.connection is not None and not state.probes.any_before(self.view.stream):
            self.connection.ask_probe(state.name)

    def breaker(self, state: ServiceState, now: float) -> Admitted | Refused:
        """The fleet breaker while connected (or forced), else this agent's own."""
        fleet = state.fleet
        if fleet is not None:  # else no fleet state is in force: the local breaker decides
            view = self.view
            if fleet.state is BreakerState.CLOSED and view.connected:
                return ORDINARY  # the common case, as the CLOSED gate decides it
            fleet = view.fleet_in_force(state, now)
            if fleet is not None:
                return _GATES[fleet.state].before_call(self, state, fleet, now)
        if state.local.state is BreakerState.CLOSED:  # the common case: no lock needed to read it
            return ORDINARY
        with state.lock:
            local = state.local
            local.tick(now)
            if local.state is BreakerState.HALF_OPEN:
                if local.acquire_probe(now, "local", state.policy.timeout_secs + 1.0):
                    return LOCAL_PROBE
                wait: float | None = PROBE_WAIT
            elif local.state is BreakerState.OPEN:
                wait = local.open_remaining(now)
            else:
                return ORDINARY
            return _open(state, local.failures, wait, local.state.name)

    @staticmethod
    def limits(
        state: ServiceState, cost: Mapping[str, float] | None, now: float, bulkhead: bool
    ) -> Refused | None:
        """Take the rate-limit unit, the quota costs and (when ``bulkhead``) a bulkhead
        place, or none of them. Call with ``state.lock`` held.

        Raises:
            ConfigurationError: ``cost`` names a resource the policy does not limit.
        """
        requests = state.requests_resource
        bucket: TokenBucket | LeasedBudget = state.leased.get(requests) or state.bucket
        wait = bucket.take(1.0, now)
        if wait:
            return rate_refused(state, bucket, wait, now)
        if not cost:  # the common call: no quota to take
            if bulkhead and not state.bulkhead.enter():
                bucket.give_back(1.0)
                return _full(state)
            return None
        taken: list[tuple[TokenBucket | LeasedBudget, float]] = [(bucket, 1.0)]
        for resource, amount in cost.items():
            quota = state.leased.get(resource) or state.quotas.get(resource)
            if quota is None:
                _give_back_units(taken)
                raise unknown_cost(state, resource)
            wait = quota.take(amount, now)
            if wait:
                _give_back_units(taken)
                limit = quota_limit(state, resource)
                error = ResourceExhausted(
                    resource, quota.used(now), limit, retry_after=_finite(wait), causes=_unleased(quota, now)
                )
                return Refused(error, "quota")
            taken.append((quota, amount))
        if bulkhead and not state.bulkhead.enter():
            _give_back_units(taken)
            return _full(state)
        return None

    @staticmethod
    def give_back(state: ServiceState, probe: str | None) -> None:
        """A probe permit that was not used (refused by a limit, or the caller's own error)."""
        if probe == "fleet":
            with state.lock:
                state.probe_ended(probe, None)
        elif probe == "local":
            with state.lock:
                state.local.release_probes("local", 1)


def rate_refused(state: ServiceState, bucket: TokenBucket | LeasedBudget, wait: float, now: float) -> Refused:
    """The request rate limit refused a call: ``bucket`` has no unit for ``wait`` s."""
    used, limit = bucket.used(now), state.policy.rate_limit_requests
    error = ResourceExhausted(
        state.requests_resource, used, limit, retry_after=_finite(wait), causes=_unleased(bucket, now)
    )
    return Refused(error, "rate_limit")


def _unleased(budget: object, now: float) -> tuple[str, ...]:
    """Why a fleet limit refuses everything: no lease for longer than it may go without."""
    if isinstance(budget, LeasedBudget) and budget.cut_off(now):
        return (
            f"no fleet lease for {budget.unleased_secs:g} s (control plane unreachable): "
            "fleet-limited calls wait for a lease",
        )
    return ()


def _full(state: ServiceState) -> Refused:
    error = ResourceExhausted(f"{state.name}.concurrency", state.bulkhead.in_flight, state.bulkhead.limit)
    return Refused(error, "bulkhead")


def _give_back_units(taken: list[tuple[TokenBucket | LeasedBudget, float]]) -> None:
    for earlier, spent in taken:
        earlier.give_back(spent)


def known_resources(state: ServiceState) -> set[str]:
    """The resources a ``cost=`` may name for this service."""
    return {q.resource for q in state.policy.quotas} | set(state.policy.fleet_resources())


def unknown_cost(state: ServiceState, resource: str) -> ConfigurationError:
    known = ", ".join(sorted(known_resources(state))) or "none"
    return ConfigurationError(
        "cost", f"service {state.name!r} limits no resource {resource!r} (its policy limits: {known})"
    )


def quota_limit(state: ServiceState, resource: str) -> int:
    for quota in state.policy.quotas:
        if quota.resource == resource:
            return quota.limit
    return 0


def _finite(wait: float) -> float | None:
    return wait if math.isfinite(wait) else None
