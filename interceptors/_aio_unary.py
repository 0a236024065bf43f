"""One aio unary call through a protected channel, without a task of its own when it can.

The common call is decided, started and settled without awaiting anything of ours: the
first attempt starts when the caller makes the call (as grpc's does), and its done-callback
records the outcome and hands the call to whoever awaits. Only a call that needs more —
a retry, a fallback, a failed attempt to read — goes on in a task, through the executor's
asyncio loop, exactly as behind the aio interceptors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc.aio
from grpc.aio import _base_call
from grpc.aio._call import UnaryUnaryCall as _PLAIN_CALL  # grpc's own: its status is readable when it ends
from grpc.aio._interceptor import InterceptedCall, _InterceptedUnaryResponseMixin
from mission_control.client.attempts import Attempt, CallPlan, Done, Step
from mission_control.client.deadline import _deadline

from ._aio_client import decided, fallback_attempts
from ._aio_failed import FailedCall
from ._channel import Route


class UnaryUnaryCall(_InterceptedUnaryResponseMixin, InterceptedCall, _base_call.UnaryUnaryCall):  # type: ignore[misc]
    """What the caller gets: grpc's intercepted-call class over the call that decided."""

    def __init__(self, outcome: asyncio.Future[Any], run: Run) -> None:
        super().__init__(outcome)  # type: ignore[arg-type]
        self._run = run

    def cancel(self) -> bool:
        cancelled: bool = super().cancel()
        if cancelled:
            self._run.cancel()
        return cancelled


class Run:
    """The plan of one call and what carries it out."""

    __slots__ = (
        "call",
        "compression",
        "credentials",
        "inner",
        "metadata",
        "outcome",
        "plan",
        "request",
        "route",
        "service",
        "task",
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
        self.plan: CallPlan | None = None
        self.service = route.service  # the breaker name it goes by (its endpoint's, if any)

    def start(self, timeout: float | None) -> None:
        route = self.route
        try:
            self.service = route.target(self.metadata)
        except BaseException as error:  # an endpoint name that is no name
            self._decided_error(error)
            return
        self.plan = plan = route.plan(timeout, self.service)
        try:
            step = plan.start()
            if type(step) is Attempt and step.target == self.service:
                token = _deadline.set(step.deadline)  # for what the call runs (an inner interceptor)
                try:
                    self.call = call = self._attempt_call(step.left)
                finally:
                    _deadline.reset(token)
                if type(call) is _PLAIN_CALL:
                    call.add_done_callback(self._ended)
                    return
                step = None  # another kind of call: awaited in the task
        except BaseException as error:
            plan.close()
            self._decided_error(error)
            return
        self._go_on(step)

    def _attempt_call(self, left: float) -> Any:
        return self.inner(
            self.request,
            timeout=left,
            metadata=self.metadata,
            credentials=self.credentials,
            wait_for_ready=self.wait_for_ready,
            compression=self.compression,
        )

    def _ended(self, call: Any) -> None:
        """The first attempt ended (grpc's done-callback)."""
        plan = self.plan
        assert plan is not None
        if self.outcome.done():  # the caller cancelled: no outcome, nothing more
            plan.close()
            return
        if call.cancelled():  # by grpc (its channel closed): as an awaited call would, it ends here
            plan.close()
            self.outcome.cancel()
            return
        if not call._cython_call.is_ok():
            self._go_on(None)  # what it failed with is read by awaiting it
            return
        try:
            step = plan.succeeded(call)
        except BaseException as error:
            plan.close()
            self._decided_error(error)
            return
        if type(step) is Done:
            plan.close()
            if step.error is None:
                self.outcome.set_result(step.result)
            else:
                self._decided_error(step.error)
            return
        self._go_on(step)

    def _go_on(self, step: Step | None) -> None:
        """The rest of the plan in a task (``step`` None: the call in flight is awaited first)."""
        self.task = asyncio.get_running_loop().create_task(self._rest(step))

    async def _rest(self, step: Step | None) -> None:
        try:
            result = await decided(self._drive(step))
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

    def _functions(self, route: Route) -> dict[str, Callable[[float], Any]]:
        async def attempt(left: float) -> Any:
            self.call = call = self._attempt_call(left)
            await call  # raises the call's AioRpcError
            return call

        fallbacks = fallback_attempts(route.fallback_channels, route.method, self.request, self.metadata)
        return {self.service: attempt, **fallbacks} if fallbacks else {self.service: attempt}

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
