"""One aio unary call through a protected channel, without a task of its own when it can.

The common call is decided, started and settled without awaiting anything of ours: the
first attempt starts when the caller makes the call (as grpc's does), and its outcome is
recorded when grpc's task for it ends: by whoever awaits the call, or by that task's
done-callback when nobody does. Only a call that needs more — a retry, a fallback, a failed
attempt to read — goes on in a task, through the executor's asyncio loop, exactly as behind
the aio interceptors. A hedged call (an idempotent one
whose policy hedges) runs in a task too, each attempt a call of its own, as behind them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import grpc.aio
from grpc.aio import _base_call
from grpc.aio._call import UnaryUnaryCall as _PLAIN_CALL  # grpc's own: its status is readable when it ends
from grpc.aio._interceptor import InterceptedCall, _InterceptedUnaryResponseMixin
from mission_control.client.admission import Ticket
from mission_control.client.attempts import CallPlan, Done, Step
from mission_control.client.deadline import _deadline
from mission_control.client.hedging import run_hedged_async

from ._aio_client import decided, fallback_attempts
from ._aio_failed import FailedCall
from ._route import Route


class UnaryUnaryCall(_InterceptedUnaryResponseMixin, InterceptedCall, _base_call.UnaryUnaryCall):  # type: ignore[misc]
    """What the caller gets: grpc's intercepted-call class over the call that decided."""

    def __init__(self, outcome: asyncio.Future[Any], run: Run) -> None:
        # As InterceptedCall.__init__, but its hook for callbacks added before the outcome is
        # known goes on the outcome only when one is added (most calls add none).
        self._interceptors_task = outcome  # type: ignore[assignment]
        self._pending_add_done_callbacks = []
        self._run = run

    def add_done_callback(self, callback: Any) -> None:
        if not self._pending_add_done_callbacks and not self._interceptors_task.done():
            self._interceptors_task.add_done_callback(self._fire_or_add_pending_done_callbacks)
        super().add_done_callback(callback)

    def __del__(self) -> None:
        if not self._interceptors_task.done():  # else cancel() could change nothing
            self.cancel()

    def cancel(self) -> bool:
        cancelled: bool = super().cancel()
        if cancelled:
            self._run.cancel()
        return cancelled

    def __await__(self) -> Generator[Any, None, Any]:
        outcome = self._interceptors_task
        try:
            run = self._run
            call = run.call
            if not outcome.done() and type(call) is _PLAIN_CALL and run.ticket and run.task is None:
                # The first attempt is in flight with no plan or task of ours: wait on
                # grpc's own task for it, not on the outcome, and settle the outcome here,
                # so the call costs the event loop no turn more than a bare one.
                yield from run.wait_first(call._invocation_task)
            call = yield from outcome.__await__()
        except asyncio.CancelledError:
            # the awaiting task was cancelled (wait_for, asyncio.timeout, task.cancel): that
            # cancelled what it waited on; the run stops as on call.cancel()
            if not outcome.done():
                self.cancel()
            elif outcome.cancelled():
                self._run.cancel()
            raise
        return (yield from call.__await__())


class Run:
    """The plan of one call and what carries it out."""

    __slots__ = (
        "call",
        "compression",
        "credentials",
        "inner",
        "metadata",
        "outcome",
        "parent",
        "plan",
        "request",
        "route",
        "service",
        "task",
        "ticket",
        "timeout",
        "wait_for_ready",
    )

    def __init__(
        self,
        route: Route,
        inner: Any,
        request: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
        outcome: asyncio.Future[Any],
    ) -> None:
        self.route = route
        self.inner = inner
        self.request = request
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
        self.outcome = outcome
        self.call: Any = None  # the attempt in flight, when started here
        self.task: asyncio.Task[None] | None = None
        self.plan: CallPlan | None = None  # made only when a call needs more than one attempt
        self.ticket: Ticket | None = None  # the first attempt's, while no plan holds it

    def start(self, timeout: float | None) -> None:
        """Admit the call and start its first attempt (or hand it to its plan)."""
        route = self.route
        self.timeout, self.parent = timeout, _deadline.get()
        try:
            self.service = service = route.target(self.metadata) if route.targeted else route.service
            hedging = route.hedging(service)
            if hedging is not None:
                run = route.hedge_run(service, timeout, self.parent, hedging)
                self._go_on_with(run_hedged_async(run, self._attempt))
                return
            admitted = route.admit(timeout, self.parent, service)
        except Exception as error:  # as the plan would raise it from its first step
            self._decided_error(error)
            return
        # the time left is the ticket's timeout: admission read the clock just now
        left = admitted.timeout if type(admitted) is Ticket else 0.0
        if left <= 0:  # refused, or no time left
            plan = self._plan()
            self._settle(plan, lambda: plan.begin(admitted))
            return
        self.ticket = ticket = admitted  # type: ignore[assignment]
        token = _deadline.set(ticket.deadline)  # for what the call runs (an inner interceptor)
        try:
            self.call = call = self._attempt_call(left)
        except Exception as exc:
            plan = self._adopted()
            self._settle(plan, functools.partial(plan.failed, exc))
            return
        finally:
            _deadline.reset(token)
        if type(call) is _PLAIN_CALL:
            # when grpc's own task for it is over (not at its status, which comes earlier):
            # whoever awaits then finds the response ready
            call._invocation_task.add_done_callback(self._ended)
        else:  # another kind of call: awaited in a task
            self._adopted()
            self._go_on(None)

    def _plan(self) -> CallPlan:
        self.plan = plan = self.route.plan(self.timeout, self.parent, self.service)
        return plan

    def _adopted(self) -> CallPlan:
        """The plan, holding the first attempt's ticket from now on."""
        plan = self._plan()
        ticket, self.ticket = self.ticket, None
        assert ticket is not None
        plan.adopt(ticket)
        return plan

    def _attempt_call(self, left: float) -> Any:
        return self.inner(
            self.request,
            timeout=left,
            metadata=self.metadata,
            credentials=self.credentials,
            wait_for_ready=self.wait_for_ready,
            compression=self.compression,
        )

    def wait_first(self, invocation: asyncio.Task[Any]) -> Generator[Any, None, None]:
        """Wait for the first attempt's own grpc task, and settle the call as its
        done-callback would: the callback comes off while the call is awaited (a loop
        handle less) and goes back if the wait ends another way (cancelled, closed)."""
        if not invocation.remove_done_callback(self._ended):  # another awaiter settles it
            try:  # noqa: SIM105 - a plain try costs the common call less than suppress()
                yield from invocation.__await__()
            except Exception:  # what the attempt failed with is read from the outcome
                pass
            return
        try:
            yield from invocation.__await__()
        except Exception:
            pass
        except BaseException:  # the wait was cancelled or closed: settled as without it
            if invocation.done():
                self._ended(invocation)
            else:
                invocation.add_done_callback(self._ended)
            raise
        self._ended(invocation)

    def _ended(self, _invocation: Any) -> None:
        """The first attempt ended."""
        call = self.call
        ex = self.route.ex
        ticket = self.ticket
        assert ticket is not None
        if self.outcome.done() or call._cython_call.is_locally_cancelled():  # no outcome, nothing more
            self.ticket = None
            ex.release(ticket)
            ex.abandon(ticket)
            if not self.outcome.done():  # by grpc (its channel closed), as an awaited call
                self.outcome.cancel()
            return
        ok = call._cython_call.is_ok()
        if ok:
            now = ex.clock()
            if now <= ticket.deadline:  # the common call, done
                self.ticket = None
                ex.succeeded(ticket, now)
                self.outcome.set_result(call)
                return
        plan = self._adopted()
        if ok:
            self._settle(plan, lambda: plan.succeeded(call))  # late: it counts as a timeout
        else:
            self._go_on(None)  # what it failed with is read by awaiting it

    def _settle(self, plan: CallPlan, next_step: Callable[[], Step]) -> None:
        """Take the plan's next step: the call is decided here, or goes on in a task."""
        try:
            step = next_step()
        except BaseException as error:
            plan.close()
            self._decided_error(error)
            return
        if type(step) is not Done:
            self._go_on(step)
            return
        plan.close()
        if step.error is None:
            self.outcome.set_result(step.result)
        else:
            self._decided_error(step.error)

    def _go_on(self, step: Step | None) -> None:
        """The rest of the plan in a task (``step`` None: the call in flight is awaited first)."""
        self._go_on_with(self._drive(step))

    def _go_on_with(self, rest: Awaitable[Any]) -> None:
        self.task = asyncio.get_running_loop().create_task(self._rest(rest))

    async def _rest(self, rest: Awaitable[Any]) -> None:
        try:
            result = await decided(rest)
        except BaseException as error:
            if not self.outcome.done():
                if isinstance(error, asyncio.CancelledError):
                    self.outcome.cancel()
                else:
                    self.outcome.set_exception(error)
            return
        if not self.outcome.done():
            self.outcome.set_result(result)

    async def _drive(self, step: Step | None) -> Any:
        route = self.route
        plan = self.plan
        assert plan is not None
        if step is None:
            call = self.call
            try:
                try:
                    await call  # raises the call's AioRpcError
                except Exception as exc:
                    step = plan.failed(exc)
                else:
                    step = plan.succeeded(call)
            except BaseException:
                plan.close()
                raise
        return await route.ex.drive_async(plan, step, self._functions(route))

    async def _attempt(self, left: float) -> Any:
        self.call = call = self._attempt_call(left)
        await call  # raises the call's AioRpcError
        return call

    def _functions(self, route: Route) -> dict[str, Callable[[float], Any]]:
        service = self.service
        fallbacks = fallback_attempts(route.fallback_channels, route.method, self.request, self.metadata)
        return {service: self._attempt, **fallbacks} if fallbacks else {service: self._attempt}

    def _decided_error(self, error: BaseException) -> None:
        if isinstance(error, grpc.aio.AioRpcError) or not isinstance(error, Exception):
            self.outcome.set_exception(error)  # grpc's call answers for it as without us
        else:
            self.outcome.set_result(FailedCall(error))

    def cancel(self) -> None:
        """The caller cancelled the call: the attempt in flight and what would follow stop."""
        task, call = self.task, self.call
        if task is not None:
            task.cancel()
        elif call is not None and not call.done():
            call.cancel()
