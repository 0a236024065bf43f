"""Sync client interceptor: every call decided by the agent's executor."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from mission_control.client.admission import Ticket
from mission_control.client.agent import MissionControl
from mission_control.client.deadline import _deadline
from mission_control.client.executor import Executor
from mission_control.client.hedging import HedgeRun, run_hedged
from mission_control.client.outcomes import Outcomes
from mission_control.client.policy import Hedging

from ._client_common import EndpointOf, ServiceMap, ServiceNamer, operation_of, response_class, with_timeout
from ._future import unary_future

_log = logging.getLogger("mission_control.interceptors")


def _result(future: Any) -> Any:
    return future.result()


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Breaker, rate limit, bulkhead, deadline, retry and fallback for unary calls;
    admission, deadline and outcome recording for streaming calls (a stream is never
    retried: once it has sent or received anything it may have taken effect)."""

    def __init__(
        self,
        mc: MissionControl,
        service: str | None = None,
        services: ServiceMap = None,
        kind: str | None = None,
        fallback_channels: Mapping[str, grpc.Channel] | None = None,
        idempotent: bool = False,
        outcomes: Outcomes | None = None,
        endpoint: EndpointOf = None,
    ) -> None:
        self._executor = mc.executor
        self._service_of = ServiceNamer(service, services, endpoint)
        self._kind = kind
        self._fallback_channels = dict(fallback_channels or {})
        self._idempotent = idempotent
        self._outcomes = outcomes

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        service = self._service_of.target(self._executor, method, client_call_details.metadata)
        ex = self._executor

        def start(left: float) -> Any:
            return continuation(with_timeout(client_call_details, left), request)

        def attempt(left: float) -> Any:
            outcome = start(left)
            outcome.result()  # raises the call's RpcError
            return outcome

        fallbacks = self._fallbacks(client_call_details, request)
        hedging = ex.hedging_for(service, self._idempotent, fallbacks)
        if hedging is not None:
            return self._hedged(hedging, service, attempt, client_call_details)
        functions: dict[str, Callable[[float], Any]] = {service: attempt, **fallbacks}
        plan = ex.plan(
            service,
            operation=operation_of(method),
            kind=self._kind,
            timeout=client_call_details.timeout,
            fallbacks=fallbacks,
            idempotent=self._idempotent,
            outcomes=self._outcomes,
        )
        return unary_future(ex, plan, start, functions)

    def _hedged(
        self,
        hedging: Hedging,
        service: str,
        attempt: Callable[[float], Any],
        details: grpc.ClientCallDetails,
    ) -> Any:
        """A hedged call (see ``client.hedging``): each attempt a call of its own on a
        thread (grpc's sync continuation blocks until the call ends, so a loser runs to
        its end and is counted then); the first good one handed back (``.future()``
        waits for it)."""
        operation = operation_of(details.method)
        run = HedgeRun(
            self._executor, service, operation, self._kind, details.timeout, None, self._outcomes,
            _deadline.get(), hedging,
        )  # fmt: skip
        return run_hedged(run, self._executor.in_thread(attempt, service), _result)

    def _fallbacks(self, details: grpc.ClientCallDetails, request: Any) -> dict[str, Any]:
        method = details.method

        def through(channel: grpc.Channel) -> Callable[[float], Any]:
            def attempt(left: float) -> Any:
                stub = channel.unary_unary(
                    method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response_class(method).FromString,
                )
                _, call = stub.with_call(request, timeout=left, metadata=details.metadata)
                return call

            return attempt

        return {name: through(ch) for name, ch in self._fallback_channels.items()}

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return self._stream(continuation, client_call_details, request, None)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return self._stream(continuation, client_call_details, request_iterator, [])

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return self._stream(continuation, client_call_details, request_iterator, [])

    def _stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        details: grpc.ClientCallDetails,
        request: Any,
        caller_errors: list[BaseException] | None,
    ) -> Any:
        method = details.method
        service = self._service_of.target(self._executor, method, details.metadata)

        def start(requests: Any, left: float) -> Any:
            return continuation(with_timeout(details, left), requests)

        return start_stream(
            self._executor,
            service,
            operation_of(method),
            self._kind,
            details.timeout,
            self._outcomes,
            request,
            caller_errors,
            start,
        )


def start_stream(
    ex: Executor,
    service: str,
    operation: str,
    kind: str | None,
    timeout: float | None,
    outcomes: Outcomes | None,
    request: Any,
    caller_errors: list[BaseException] | None,
    start: Callable[[Any, float], Any],
) -> Any:
    """One streaming attempt: admitted, ``start(request, seconds_left)``, its outcome
    recorded when it ends. ``caller_errors`` (streamed requests) collects what the
    caller's own request iterator raised."""
    ticket = ex.admit(service, operation, kind=kind, timeout=timeout, cost=None)
    if caller_errors is not None:
        request = _watched(request, caller_errors)
    try:
        call = start(request, ticket.timeout)
    except BaseException:
        ex.release(ticket)
        ex.abandon(ticket)
        raise
    ended = StreamEnded(ex, ticket, outcomes, call, caller_errors)
    if not _add_callback(call, ended):  # the call has ended already: the callback will never run
        ended()
    return call


class StreamEnded:
    """What runs when a stream ends: its place comes back and its outcome is recorded.

    It holds the call weakly, so that a caller who drops a stream it stopped reading lets
    grpc cancel it at once (as without us), and keeps grpc's per-call state, which tells a
    call cancelled (by its caller, or on being dropped) from one that ended, even once the
    call object is gone. Cancelled, or broken by the caller's request iterator: neither,
    and a probe permit it held comes back.
    """

    __slots__ = ("call", "caller_errors", "ex", "outcomes", "state", "ticket")

    def __init__(
        self,
        ex: Executor,
        ticket: Ticket,
        outcomes: Outcomes | None,
        call: Any,
        caller_errors: list[BaseException] | None,
    ) -> None:
        self.ex = ex
        self.ticket = ticket
        self.outcomes = outcomes
        self.caller_errors = caller_errors
        self.state = getattr(call, "_state", None)  # grpc's _RPCState: no reference to the call
        try:
            self.call: Callable[[], Any] = weakref.ref(call)
        except TypeError:  # an object without weak references: held until it ends
            self.call = lambda: call

    def __call__(self) -> None:
        ex, ticket = self.ex, self.ticket
        ex.release(ticket)
        try:
            error = self._error()
        except _NoOutcome:
            ex.abandon(ticket)
            return
        except Exception:
            ex.abandon(ticket)
            _log.debug("stream ended without an outcome", exc_info=True)
            return
        ex.record(ticket, None if error is None else ex.classify(ticket, error, self.outcomes))

    def _error(self) -> BaseException | None:
        """What the stream ended with (None: OK); raises _NoOutcome when it counts as neither."""
        state, call = self.state, self.call()
        if self.caller_errors or getattr(state, "cancelled", False):
            raise _NoOutcome  # cancelled by the caller or on being dropped, or the caller's bug
        if call is not None:
            if call.cancelled():
                raise _NoOutcome
            # the call itself, or what an inner interceptor raised
            return call.exception()  # type: ignore[no-any-return]
        if state is None or getattr(state, "code", None) is None:
            raise _NoOutcome  # gone, and nothing says how it ended
        return None if state.code is grpc.StatusCode.OK else _Ended(state)


class _NoOutcome(Exception):
    pass


class _Ended(grpc.RpcError):  # type: ignore[misc]
    """A stream that ended after its caller let go of it, read from grpc's call state."""

    def __init__(self, state: Any) -> None:
        super().__init__(state.details)
        self._state = state

    def code(self) -> grpc.StatusCode:
        return self._state.code  # type: ignore[no-any-return]

    def details(self) -> str:
        return self._state.details or ""

    def initial_metadata(self) -> Any:
        return self._state.initial_metadata

    def trailing_metadata(self) -> Any:
        return self._state.trailing_metadata


def _watched(requests: Any, caller_errors: list[BaseException]) -> Iterator[Any]:
    """The caller's request iterator; what it raises is noted (it is not the service's)."""
    try:
        iterator = iter(requests)
        while True:
            try:
                request = next(iterator)
            except StopIteration:
                return
            yield request
    except Exception as exc:
        caller_errors.append(exc)
        raise


def _add_callback(call: Any, callback: Callable[[], None]) -> bool:
    try:
        return bool(call.add_callback(callback))
    except NotImplementedError:  # a call that failed before it began (grpc's _InactiveRpcError)
        return False
