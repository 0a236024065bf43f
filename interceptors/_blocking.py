"""A blocking unary call of a protected sync channel: ``__call__`` and ``with_call``.

The common call — its method's service known to the route, a policy that does not hedge,
admitted by :func:`take_plain` (a CLOSED breaker, a rate unit, a bulkhead place), a first
attempt that succeeds in time — is admitted, made and counted in :func:`blocking` without a
ticket, a plan or an object of its own. Any other call (the route's first, one to an
endpoint's breaker, a hedged one) is decided by :func:`_decide`; a common call that turns
out otherwise (refused, no time left, failed, late, interrupted) gets the ticket it would
have had, made at the same clock reading, and goes on as any other: the first attempt's
outcome handed to the call's plan (:func:`_settle`), which the executor carries out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mission_control.client.admission import Refused, Ticket
from mission_control.client.admit_fast import first_ticket, seconds_left, take_plain
from mission_control.client.deadline import _deadline
from mission_control.client.hedging import run_hedged

from ._route import Route

if TYPE_CHECKING:
    from ._channel import _UnaryUnary


@dataclass(frozen=True)
class _Call:
    """One blocking call's arguments, for the paths that are not the common call's."""

    multi: Any  # the underlying channel's multi-callable
    request: Any
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any
    with_call: bool

    def __call__(self, left: float) -> Any:
        """An attempt with ``left`` seconds, waited for (``with_call``: with its call)."""
        made = self.multi.with_call if self.with_call else self.multi
        return made(
            self.request,
            timeout=left,
            metadata=self.metadata,
            credentials=self.credentials,
            wait_for_ready=self.wait_for_ready,
            compression=self.compression,
        )

    def start(self, left: float) -> Any:
        """An attempt with ``left`` seconds, not waited for: grpc's future of it."""
        return self.multi.future(
            self.request,
            timeout=left,
            metadata=self.metadata,
            credentials=self.credentials,
            wait_for_ready=self.wait_for_ready,
            compression=self.compression,
        )


def blocking(with_call: bool) -> Callable[..., Any]:
    """``__call__`` (``with_call`` False) or ``with_call`` of a protected unary method."""

    def call(
        self: _UnaryUnary,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        route = self._route
        state = route.common
        if state is None or state.policy.hedging is not None:
            made = _Call(self._inner, request, metadata, credentials, wait_for_ready, compression, with_call)
            return _decide(route, made, timeout)
        ex = route.ex
        now = ex.clock()
        parent = _deadline.get()
        taken = take_plain(ex, state, now)
        left = seconds_left(state, timeout, parent, now) if taken is True else 0.0
        if left <= 0:  # refused, or no time left: the plan says what follows
            made = _Call(self._inner, request, metadata, credentials, wait_for_ready, compression, with_call)
            if taken is False:
                admitted = ex.enter_full(state, route.operation, route.kind, timeout, None, parent, True, now)
            elif taken is True:
                admitted = first_ticket(state, route.operation, route.kind, timeout, parent, now)
            else:
                admitted = ex.count_refused(state, taken, route.operation)
            return _made(route, made, timeout, route.service, parent, admitted)
        inner = self._inner.with_call if with_call else self._inner
        token = _deadline.set(now + left)  # for what the call runs (an inner interceptor)
        try:
            result = inner(
                request,
                timeout=left,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except Exception as exc:
            failed: Exception | None = exc
            result = end = None
        except BaseException:
            ticket = first_ticket(state, route.operation, route.kind, timeout, parent, now)
            ex.release(ticket)
            ex.abandon(ticket)
            raise
        else:
            end = ex.clock()
            if end <= now + left:
                if not ex.succeeded_plain(state, end):  # to be judged for slowness: with a ticket
                    ex.succeeded(first_ticket(state, route.operation, route.kind, timeout, parent, now), end)
                return result
            failed = None  # late: it counts as a timeout
        finally:
            _deadline.reset(token)
        made = _Call(self._inner, request, metadata, credentials, wait_for_ready, compression, with_call)
        ticket = first_ticket(state, route.operation, route.kind, timeout, parent, now)
        return _settle(route, made, timeout, route.service, parent, ticket, result, failed, end)

    return call


def _decide(route: Route, call: _Call, timeout: float | None) -> Any:
    """A call not known to be common: hedged, to an endpoint's breaker, or the route's
    first; admitted by the route and made by :func:`_made`."""
    parent = _deadline.get()
    service = route.target(call.metadata) if route.targeted else route.service
    hedging = route.hedging(service)
    if hedging is not None:
        run = route.hedge_run(service, timeout, parent, hedging)
        return run_hedged(run, call.start, _with_call if call.with_call else _result)
    return _made(route, call, timeout, service, parent, route.admit(timeout, parent, service))


def _made(
    route: Route,
    call: _Call,
    timeout: float | None,
    service: str,
    parent: float | None,
    admitted: Ticket | Refused,
) -> Any:
    """The call as admission decided: a ticket with time left makes its first attempt
    here; a success in time is counted; anything else goes to :func:`_settle`."""
    ex = route.ex
    # the time left is the ticket's timeout: admission read the clock just now
    left = admitted.timeout if type(admitted) is Ticket else 0.0
    result, failed, end = None, None, None
    if left > 0:
        ticket: Ticket = admitted  # type: ignore[assignment]
        token = _deadline.set(ticket.deadline)
        try:
            result = call(left)
        except Exception as exc:
            failed = exc
        except BaseException:
            ex.release(ticket)
            ex.abandon(ticket)
            raise
        finally:
            _deadline.reset(token)
        if failed is None:
            end = ex.clock()
            if end <= ticket.deadline:
                ex.succeeded(ticket, end)
                return result
    return _settle(route, call, timeout, service, parent, admitted, result, failed, end)


def _settle(
    route: Route,
    call: _Call,
    timeout: float | None,
    service: str,
    parent: float | None,
    admitted: Ticket | Refused,
    result: Any,
    failed: Exception | None,
    end: float | None,
) -> Any:
    """What follows a first attempt that was not made (refused or no time left: nothing
    ``failed`` and no ``end``), failed, or succeeded late (at ``end``): the plan's next
    step, carried out by the executor."""
    plan = route.plan(timeout, parent, service)
    made = failed is not None or end is not None
    if made:
        plan.adopt(admitted)  # type: ignore[arg-type]
    try:
        if not made:
            step = plan.begin(admitted)
        elif failed is None:
            step = plan.succeeded(result)  # late: it counts as a timeout
        else:
            step = plan.failed(failed)
    except BaseException:
        plan.close()
        raise
    functions: dict[str, Callable[[float], Any]] = {service: call}
    if route.fallback_names:
        functions.update(route.fallbacks(call.request, call.metadata, call.with_call))
    return route.ex.drive(plan, step, functions)


def _result(future: Any) -> Any:
    return future.result()


def _with_call(future: Any) -> Any:
    return future.result(), future
