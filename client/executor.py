"""One executor, two loops: the per-call decisions, shared by sync and asyncio callers.

Per logical call, in order: breaker (local view; never the network) → rate limit and
quotas → bulkhead → deadline → the call → classify the outcome with the taxonomy →
retry (tenacity; backoff + jitter, retryable codes only, honours RetryInfo and
``grpc-retry-pushback-ms``, never past the deadline, within the retry budget; each retry
passes the breaker again) → fallback services when the policy names them and the caller
supplied them → record the outcome for the fleet.

The decision helpers are plain methods; :meth:`Executor.run` and :meth:`Executor.run_async`
are the only places that call, sleep or await.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from tenacity import AsyncRetrying, Retrying, retry_if_exception

from .breaker import BreakerState
from .connection import ControlPlaneConnection
from .errors import (
    CircuitBreakerOpen,
    ErrorContext,
    LLMProviderUnavailable,
    MissionControlError,
    OperationTimeout,
    ResourceExhausted,
    StorageFailure,
)
from .fleet_limits import LeasedBudget
from .limits import TokenBucket
from .retry import policy_stop, policy_wait
from .status import remote_status_of
from .telemetry import Telemetry
from .view import LocalView, ServiceState

__all__ = ["Executor", "ServiceKind", "current_deadline", "kind_of"]

T = TypeVar("T")

#: Codes that say the *service* failed (they move the breaker); any other code is the
#: service answering (e.g. INVALID_ARGUMENT is the caller's problem, not an outage).
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
    }
)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mission_control_deadline", default=None
)


def current_deadline() -> float | None:
    """Seconds left for the guarded call running in this context (pass it to your I/O)."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class ServiceKind:
    """What a service is, to name its failures: an LLM provider, storage, or other."""

    LLM = "llm"
    STORAGE = "storage"
    OTHER = "other"


_STORAGE_HINTS = ("storage", "duckdb", "db", "sql", "r2", "s3", "blob", "bucket", "object")


def kind_of(service: str) -> str:
    """A service's kind guessed from its name (``llm_provider`` -> llm, ``storage_backend``
    -> storage); pass ``kind=`` explicitly where the name says nothing."""
    name = service.lower()
    if "llm" in name or "model" in name:
        return ServiceKind.LLM
    if any(hint in name for hint in _STORAGE_HINTS):
        return ServiceKind.STORAGE
    return ServiceKind.OTHER


class _Failure(Exception):
    """An attempt's failure as the retry loop sees it (internal)."""

    def __init__(self, error: BaseException, code: grpc.StatusCode | None, retry_after: float | None):
        super().__init__(str(error))
        self.error = error
        self.code = code
        self.retry_after = retry_after


@dataclass(slots=True)
class _Call:
    state: ServiceState
    service: str
    operation: str
    kind: str
    deadline: float
    timeout: float
    recovering: bool = False


class Executor:
    """Decides and runs protected calls for one agent.

    Args:
        view: the local view calls are decided from.
        connection: the control-plane stream (None when running without one).
        agent / session_id: reported in errors' context.
    """

    def __init__(
        self,
        view: LocalView,
        connection: ControlPlaneConnection | None = None,
        *,
        agent: str = "",
        session_id: str = "",
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.view = view
        self.connection = connection
        self.agent = agent
        self.session_id = session_id
        self.sleep = sleep
        self.async_sleep = async_sleep
        self.clock = view.clock

    # -- admission -------------------------------------------------------------

    def _context(self, service: str, operation: str) -> ErrorContext:
        return ErrorContext(service, self.agent, operation, self.session_id)

    def _reject(self, state: ServiceState, error: MissionControlError, operation: str) -> None:
        with state.lock:
            state.tally.rejected += 1
        error.context = self._context(state.name, operation)
        if self.telemetry is not None:
            self.telemetry.call_rejected(error, state.name, operation, "breaker")
        raise error

    def check_breaker(self, state: ServiceState, operation: str, now: float) -> str | None:
        """Raises CircuitBreakerOpen when the call must not go; else returns the probe
        kind the call runs as: "fleet", "local" or None (an ordinary call)."""
        fleet = self.view.fleet_in_force(state, now)
        if fleet is not None:
            s = fleet.state
            if s is BreakerState.CLOSED or s is BreakerState.FORCED_CLOSED or s is BreakerState.DISABLED:
                return None
            if s is BreakerState.HALF_OPEN and state.take_permit(now):
                return "fleet"
            if s is not BreakerState.FORCED_OPEN:
                if s is BreakerState.HALF_OPEN or fleet.open_until <= now:
                    if self.connection is not None:
                        self.connection.ask_probe(state.name)
                    wait: float | None = 0.05
                else:
                    wait = fleet.open_until - now
            else:
                wait = None
            self._reject(state, CircuitBreakerOpen(state.name, fleet.failures, retry_after=wait), operation)
        if state.local.state is BreakerState.CLOSED:  # the common case: no lock needed to read it
            return None
        with state.lock:
            local = state.local
            local.tick(now)
            if local.state is BreakerState.HALF_OPEN:
                if local.acquire_probe(now, "local", state.policy.timeout_secs + 1.0):
                    return "local"
                wait = 0.05
            elif local.state is BreakerState.OPEN:
                wait = local.open_remaining(now)
            else:
                return None
            failures = local.failures
        self._reject(state, CircuitBreakerOpen(state.name, failures, retry_after=wait), operation)
        return None  # unreachable

    def admit(
        self,
        service: str,
        operation: str,
        *,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
    ) -> tuple[_Call, str | None]:
        """Breaker, rate limit, quotas, bulkhead and deadline for a new logical call."""
        state = self.view.get(service)
        now = self.clock()
        probe = self.check_breaker(state, operation, now)
        policy = state.policy
        with state.lock:  # one short section for every limit; never held across a call
            refused = self._limits(state, service, cost, now)
            if refused is None:
                state.budget.record_call(now)
            else:
                state.tally.rejected += 1
        if refused is not None:
            error, reason = refused
            self._give_back(state, probe)
            error.context = self._context(service, operation)
            if self.telemetry is not None:
                self.telemetry.call_rejected(error, service, operation, reason)
            raise error
        seconds = policy.timeout_secs if timeout is None else min(policy.timeout_secs, timeout)
        if kind is None:
            kind = state.kind or kind_of(service)
            state.kind = kind
        return _Call(state, service, operation, kind, now + seconds, seconds), probe

    @staticmethod
    def _limits(
        state: ServiceState, service: str, cost: Mapping[str, float] | None, now: float
    ) -> tuple[ResourceExhausted, str] | None:
        """Take the rate-limit token, the quota costs and a bulkhead place, or none of them;
        else the error and which limit refused ("rate_limit", "quota" or "bulkhead")."""
        requests = state.requests_resource
        bucket: TokenBucket | LeasedBudget = state.leased.get(requests) or state.bucket
        wait = bucket.take(1.0, now)
        if wait:
            limit = state.policy.rate_limit_requests
            error = ResourceExhausted(requests, bucket.used(now), limit, retry_after=_finite(wait))
            return error, "rate_limit"
        taken: list[tuple[TokenBucket | LeasedBudget, float]] = [(bucket, 1.0)]
        for resource, amount in (cost or {}).items():
            leased = state.leased.get(resource)
            quota = leased or state.quotas.get(resource)
            if quota is None:
                continue
            wait = quota.take(amount, now)
            if wait:
                for earlier, spent in taken:
                    earlier.give_back(spent)
                limit = _quota_limit(state, resource)
                error = ResourceExhausted(resource, quota.used(now), limit, retry_after=_finite(wait))
                return error, "quota"
            taken.append((quota, amount))
        if not state.bulkhead.enter():
            for earlier, spent in taken:
                earlier.give_back(spent)
            bulkhead = state.bulkhead
            error = ResourceExhausted(f"{service}.concurrency", bulkhead.in_flight, bulkhead.limit)
            return error, "bulkhead"
        return None

    @staticmethod
    def release(call: _Call) -> None:
        """The call is over: its bulkhead place is free again."""
        state = call.state
        with state.lock:
            state.bulkhead.leave()

    def _give_back(self, state: ServiceState, probe: str | None) -> None:
        if probe == "fleet":
            with state.lock:
                state.tally.probes_released += 1
        elif probe == "local":
            with state.lock:
                state.local.release_probes("local", 1)

    # -- outcomes --------------------------------------------------------------

    def classify(self, call: _Call, exc: BaseException) -> _Failure:
        """The taxonomy error an attempt's exception stands for, its code, and any wait it
        asked for. Errors that already carry the taxonomy pass through unchanged."""
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            return self._classify_rpc(call, exc)
        if isinstance(exc, MissionControlError):
            return _Failure(exc, exc.grpc_code, exc.retry_after)
        if isinstance(exc, TimeoutError):
            error: BaseException = OperationTimeout(call.operation, call.timeout)
            error.__cause__ = exc
            return _Failure(error, grpc.StatusCode.DEADLINE_EXCEEDED, None)
        if isinstance(exc, ConnectionError | OSError):
            error = self._unavailable(call, f"{type(exc).__name__}: {exc}") or exc
            if error is not exc:
                error.__cause__ = exc
            return _Failure(error, grpc.StatusCode.UNAVAILABLE, None)
        return _Failure(exc, None, None)  # the caller's own exception: not an outage

    def _classify_rpc(self, call: _Call, exc: grpc.RpcError) -> _Failure:
        remote = remote_status_of(exc)
        code = remote.code
        retry_after = remote.retry_after
        if retry_after is None:
            retry_after = _pushback(exc)
        if remote.error is not None:
            remote.error.__cause__ = exc
            return _Failure(remote.error, code, retry_after)
        error: BaseException | None = None
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            error = OperationTimeout(call.operation, call.timeout)
        elif code is grpc.StatusCode.UNAVAILABLE:
            error = self._unavailable(call, remote.message or code.name)
        if error is None:
            return _Failure(exc, code, retry_after)
        error.__cause__ = exc
        return _Failure(error, code, retry_after)

    def _unavailable(self, call: _Call, details: str) -> MissionControlError | None:
        if call.kind == ServiceKind.LLM:
            return LLMProviderUnavailable(call.service, details)
        if call.kind == ServiceKind.STORAGE:
            return StorageFailure(call.service, call.operation, details)
        return None

    def record(self, call: _Call, probe: str | None, failure: _Failure | None) -> None:
        """Count one attempt's outcome for the fleet and the local breaker."""
        state = call.state
        failed = failure is not None and failure.code in FAILURE_CODES
        now = self.clock()
        with state.lock:
            tally = state.tally
            if probe == "fleet":
                if failed:
                    tally.probe_failures += 1
                else:
                    tally.probe_successes += 1
            elif failed:
                tally.failures += 1
                tally.trailing_failures += 1
            else:
                tally.successes += 1
                tally.trailing_failures = 0
            if failed and failure is not None:
                error = failure.error
                name = error.error_type if isinstance(error, MissionControlError) else "Unclassified"
                tally.errors_by_type[name] += 1
                tally.errors_by_operation[call.operation] += 1
            if probe == "local":
                state.local.record_probes(now, "local", int(not failed), int(failed))
            elif probe is None:
                state.local.record(now, int(not failed), int(failed), int(failed))
        if failed and self.connection is not None:
            self.connection.nudge()

    def _recovered(self, state: ServiceState, attempted: bool, succeeded: bool) -> None:
        """Count a call whose first try failed and that was retried or sent to a fallback."""
        if attempted:
            with state.lock:
                state.tally.recovery_attempts += 1
                if succeeded:
                    state.tally.recovery_successes += 1
            if self.telemetry is not None:
                self.telemetry.recovered(state.name, succeeded)

    def _failed(self, error: BaseException, service: str, operation: str) -> None:
        """The caller gets ``error``: tell telemetry, when it is on and this is an outage."""
        if self.telemetry is None:
            return
        code = getattr(error, "code", None)
        if isinstance(error, MissionControlError) or (callable(code) and code() in FAILURE_CODES):
            self.telemetry.call_failed(error, service, operation)

    def _retryable(self, call: _Call, failure: _Failure) -> bool:
        error = failure.error
        if isinstance(error, CircuitBreakerOpen) or failure.code is None:
            return False
        if failure.code.name not in call.state.policy.retryable_codes:
            return False
        # A quota says when it refills; without that, retrying only burns the budget.
        return not (isinstance(error, ResourceExhausted) and failure.retry_after is None)

    def _with_context(self, call: _Call, error: BaseException) -> BaseException:
        if isinstance(error, MissionControlError) and error.context is None:
            error.context = self._context(call.service, call.operation)
        return error

    # -- the sync loop -----------------------------------------------------------

    def run(
        self,
        service: str,
        attempt: Callable[[float], T],
        *,
        operation: str = "",
        kind: str | None = None,
        timeout: float | None = None,
        cost: Mapping[str, float] | None = None,
        fallbacks: Mapping[str, Callable[[float], T]] | None = None,
    ) -> T:
        """Run ``attempt(seconds_left)`` under the service's policy; returns its result or
        raises the classified error."""
        try:
            call, probe = self.admit(service, operation, kind=kind, timeout=timeout, cost=cost)
        except (CircuitBreakerOpen, ResourceExhausted) as rejected:
            return self._fall_back(service, rejected, operation, timeout, fallbacks, False)
        try:
            try:
                return self._attempt(call, probe, attempt)
            except _Failure as failure:
                outcome = self._retry(call, failure, attempt)
        finally:
            self.release(call)
        return self._fall_back(service, outcome, operation, timeout, fallbacks, call.recovering)

    def _attempt(self, call: _Call, probe: str | None, attempt: Callable[[float], T]) -> T:
        left = call.deadline - self.clock()
        if left <= 0:
            raise self._timed_out(call, probe)
        try:
            result = attempt(left)
        except Exception as exc:
            failure = self.classify(call, exc)
            self.record(call, probe, failure)
            raise failure from None
        if self.clock() > call.deadline:  # a sync call cannot be interrupted: late is a timeout
            raise self._timed_out(call, probe)
        self.record(call, probe, None)
        return result

    def _timed_out(self, call: _Call, probe: str | None) -> _Failure:
        error = OperationTimeout(call.operation, call.timeout)
        failure = _Failure(error, grpc.StatusCode.DEADLINE_EXCEEDED, None)
        self.record(call, probe, failure)
        return failure

    def _retrying(self, call: _Call, cls: type[Retrying] | type[AsyncRetrying]) -> Any:
        state = call.state
        policy = state.policy
        left = call.deadline - self.clock()

        def spend_retry() -> bool:
            with state.lock:
                return state.budget.try_retry(self.clock())

        telemetry = self.telemetry

        def before_sleep(retry_state: Any) -> None:
            if telemetry is not None:
                failure = retry_state.outcome.exception()
                error = getattr(failure, "error", failure)
                telemetry.retrying(
                    call.service, retry_state.attempt_number, retry_state.upcoming_sleep, error
                )

        return cls(
            sleep=self.sleep if cls is Retrying else self.async_sleep,  # type: ignore[arg-type]
            before_sleep=before_sleep,
            stop=policy_stop(policy.max_retries, left, spend_retry),
            wait=policy_wait(policy.backoff),
            retry=retry_if_exception(lambda e: isinstance(e, _Failure) and self._retryable(call, e)),
            reraise=True,
        )

    def _retry(self, call: _Call, first: _Failure, attempt: Callable[[float], T]) -> BaseException:
        """Retries after a failed first attempt: the final error, or _Success."""
        if not self._retryable(call, first) or call.state.policy.max_retries == 0:
            return self._with_context(call, first.error)
        call.recovering = True
        replay = [first]

        def again() -> T:
            if replay:  # tenacity's first attempt is the one already made
                raise replay.pop()
            probe = self.check_breaker(call.state, call.operation, self.clock())
            return self._attempt(call, probe, attempt)

        try:
            return _Success(self._retrying(call, Retrying)(again))
        except _Failure as failure:
            return self._with_context(call, failure.error)
        except CircuitBreakerOpen as rejected:
            return rejected

    def _fall_back(
        self,
        service: str,
        outcome: BaseException,
        operation: str,
        timeout: float | None,
        fallbacks: Mapping[str, Callable[[float], T]] | None,
        attempted: bool,
    ) -> T:
        state = self.view.get(service)
        if isinstance(outcome, _Success):
            self._recovered(state, attempted, True)
            return outcome.result  # type: ignore[no-any-return]
        for name in self._fallback_names(state, outcome, fallbacks):
            attempted = True
            assert fallbacks is not None
            try:
                result = self.run(name, fallbacks[name], operation=operation, timeout=timeout)
            except Exception as fallback_error:
                self._fallback_failed(outcome, service, name, fallback_error)
                continue
            self._fallback_served(state, name)
            return result
        raise self._given_up(state, outcome, operation, attempted)

    def _fallback_failed(self, outcome: BaseException, service: str, name: str, error: Exception) -> None:
        outcome.add_note(f"fallback {name!r} failed too: {error}")
        if self.telemetry is not None:
            self.telemetry.fell_back(service, name, False)

    def _fallback_served(self, state: ServiceState, name: str) -> None:
        if self.telemetry is not None:
            self.telemetry.fell_back(state.name, name, True)
        self._recovered(state, True, True)

    def _given_up(
        self, state: ServiceState, outcome: BaseException, operation: str, attempted: bool
    ) -> BaseException:
        """Nothing saved the call: count it, tell telemetry, and hand back the error."""
        self._recovered(state, attempted, False)
        self._failed(outcome, state.name, operation)
        return outcome

    def _fallback_names(
        self, state: ServiceState, error: BaseException, fallbacks: Mapping[str, Any] | None
    ) -> list[str]:
        if not fallbacks or not _falls_back(error):
            return []
        return [name for name in state.policy.fallbacks if name in fallbacks]

    # -- the asyncio loop --------------------------------------------------------

    async def run_async(
        self,
        service: str,
        attempt: Callable[[float], Awaitable[T]],
        *,
        operation: str = "",
        kind: str | None = None,
        timeout: float | None = None,
        cost: Mapping[str, float] | None = None,
        fallbacks: Mapping[str, Callable[[float], Awaitable[T]]] | None = None,
    ) -> T:
        """The asyncio form of :meth:`run`; the deadline cancels a slow attempt."""
        try:
            call, probe = self.admit(service, operation, kind=kind, timeout=timeout, cost=cost)
        except (CircuitBreakerOpen, ResourceExhausted) as rejected:
            return await self._fall_back_async(service, rejected, operation, timeout, fallbacks, False)
        try:
            try:
                return await self._attempt_async(call, probe, attempt)
            except _Failure as failure:
                outcome = await self._retry_async(call, failure, attempt)
        finally:
            self.release(call)
        return await self._fall_back_async(service, outcome, operation, timeout, fallbacks, call.recovering)

    async def _attempt_async(
        self, call: _Call, probe: str | None, attempt: Callable[[float], Awaitable[T]]
    ) -> T:
        left = call.deadline - self.clock()
        if left <= 0:
            raise self._timed_out(call, probe)
        try:
            async with asyncio.timeout(left):
                result = await attempt(left)
        except Exception as exc:
            failure = self.classify(call, exc)
            self.record(call, probe, failure)
            raise failure from None
        self.record(call, probe, None)
        return result

    async def _retry_async(
        self, call: _Call, first: _Failure, attempt: Callable[[float], Awaitable[T]]
    ) -> BaseException:
        if not self._retryable(call, first) or call.state.policy.max_retries == 0:
            return self._with_context(call, first.error)
        call.recovering = True
        replay = [first]

        async def again() -> T:
            if replay:
                raise replay.pop()
            probe = self.check_breaker(call.state, call.operation, self.clock())
            return await self._attempt_async(call, probe, attempt)

        try:
            return _Success(await self._retrying(call, AsyncRetrying)(again))
        except _Failure as failure:
            return self._with_context(call, failure.error)
        except CircuitBreakerOpen as rejected:
            return rejected

    async def _fall_back_async(
        self,
        service: str,
        outcome: BaseException,
        operation: str,
        timeout: float | None,
        fallbacks: Mapping[str, Callable[[float], Awaitable[T]]] | None,
        attempted: bool,
    ) -> T:
        state = self.view.get(service)
        if isinstance(outcome, _Success):
            self._recovered(state, attempted, True)
            return outcome.result  # type: ignore[no-any-return]
        for name in self._fallback_names(state, outcome, fallbacks):
            attempted = True
            assert fallbacks is not None
            try:
                result = await self.run_async(name, fallbacks[name], operation=operation, timeout=timeout)
            except Exception as fallback_error:
                self._fallback_failed(outcome, service, name, fallback_error)
                continue
            self._fallback_served(state, name)
            return result
        raise self._given_up(state, outcome, operation, attempted)


class _Success(Exception):
    """Carries a retry loop's result out of the helper (internal)."""

    def __init__(self, result: Any) -> None:
        super().__init__("success")
        self.result = result


def _falls_back(error: BaseException) -> bool:
    """Whether another service may serve a call that failed with ``error``."""
    if isinstance(
        error,
        CircuitBreakerOpen | LLMProviderUnavailable | StorageFailure | OperationTimeout | ResourceExhausted,
    ):
        return True
    code = getattr(error, "code", None)
    return callable(code) and code() in FAILURE_CODES


def _quota_limit(state: ServiceState, resource: str) -> int:
    for quota in state.policy.quotas:
        if quota.resource == resource:
            return quota.limit
    return 0


def _finite(wait: float) -> float | None:
    return wait if math.isfinite(wait) else None


def _pushback(exc: grpc.RpcError) -> float | None:
    try:
        metadata: Any = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
        for key, value in metadata:
            if key == "grpc-retry-pushback-ms":
                ms = int(value)
                return ms / 1000.0 if ms >= 0 else None
    except (TypeError, ValueError, AttributeError):
        return None
    return None
