"""A sync unary call made with ``.future()``: it goes on without the caller.

Its first attempt runs as grpc runs it; when that ends, the outcome is recorded and, if the
plan says so, the retries and fallbacks run on a thread of their own. The object answers
as a ``grpc.Future`` and ``grpc.Call`` would: result, exception, callbacks, and the
metadata of the attempt that decided the call.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from mission_control.client.attempts import Attempt, CallPlan, Done, Sleep, Step
from mission_control.client.errors import MissionControlError
from mission_control.client.executor import Executor


def settle(plan: CallPlan, outcome: Any) -> Step:
    """Feed a finished attempt's outcome to ``plan``."""
    error = outcome.exception()
    if error is not None:
        return plan.failed(error)
    return plan.succeeded(outcome)


def unary_future(
    ex: Executor,
    plan: CallPlan,
    start: Callable[[float], Any],
    functions: Mapping[str, Callable[[float], Any]],
) -> Any:
    """Carry out a unary call's ``plan``: ``start(seconds_left)`` begins the service's
    attempt and hands back grpc's future-like call; ``functions`` make whole attempts.
    Returns the call that served (or a :class:`PendingCall` still going) or raises."""
    try:
        step = plan.start()
        if type(step) is Sleep:  # waiting for a HALF_OPEN to end: not in the caller's thread
            return PendingCall.deferred(ex, plan, step, functions)
        if type(step) is Attempt:
            if step.target != plan.service:  # a fallback first (the breaker is open): not here
                return PendingCall.deferred(ex, plan, step, functions)
            step, pending = _first(ex, plan, step, start, functions)
            if pending is not None:
                return pending
    except BaseException:
        plan.close()
        raise
    if type(step) is Done and _answers(step.error):
        # refused, or failed already: answered as a call that fails later is (grpc's
        # .future() raises nothing), with its code, details and metadata
        plan.close()
        return PendingCall.ended(ex, plan, step.error, functions)
    return ex.drive(plan, step, functions)


def _answers(error: BaseException | None) -> bool:
    """Whether a call failed with ``error`` has a status to answer with: ours, or grpc's
    (any other error is raised, and grpc's future-like outcome carries it)."""
    if isinstance(error, MissionControlError):
        return True
    return isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call)


def _first(
    ex: Executor,
    plan: CallPlan,
    step: Attempt,
    start: Callable[[float], Any],
    functions: Mapping[str, Callable[[float], Any]],
) -> tuple[Step, PendingCall | None]:
    """The first attempt, without waiting for it: ``.future()`` hands back a call that is
    still running, and so do we."""
    try:
        outcome = start(step.left)
    except Exception as exc:
        after = plan.failed(exc)
    else:
        if not outcome.done():
            return step, PendingCall(ex, plan, outcome, functions)
        after = settle(plan, outcome)
    if type(after) is Done:
        return after, None
    # It failed at once (an inner interceptor, a blocking call) and a retry or a
    # fallback follows: on a thread of its own, so that .future() does not wait for it.
    return after, PendingCall.deferred(ex, plan, after, functions)


class _Cancelled(BaseException):
    """The caller cancelled the call: what is left of the plan stops (not an outcome)."""


class PendingCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    def __init__(
        self,
        ex: Executor,
        plan: CallPlan,
        first: Any,
        functions: Mapping[str, Callable[[float], Any]],
    ) -> None:
        self._ex = ex
        self._plan = plan
        self._cancel = threading.Event()
        self._functions = {name: self._unless_cancelled(fn) for name, fn in functions.items()}
        self._call = first  # the latest attempt's call, the final one once decided
        self._final: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._context = contextvars.copy_context()  # the caller's (trace, deadline) for what follows
        if first is not None:
            first.add_done_callback(self._first_ended)

    @classmethod
    def deferred(
        cls, ex: Executor, plan: CallPlan, step: Step, functions: Mapping[str, Callable[[float], Any]]
    ) -> PendingCall:
        """A call whose first step is not the service's attempt (a fallback while the
        breaker is open): the whole plan runs on a thread of its own."""
        pending = cls(ex, plan, None, functions)
        pending._start(step)
        return pending

    @classmethod
    def ended(
        cls,
        ex: Executor,
        plan: CallPlan,
        error: BaseException,
        functions: Mapping[str, Callable[[float], Any]],
    ) -> PendingCall:
        """A call decided, failed, before ``.future()`` returned."""
        pending = cls(ex, plan, None, functions)
        pending._decided(None, error)
        return pending

    def _unless_cancelled(self, fn: Callable[[float], Any]) -> Callable[[float], Any]:
        def attempt(left: float) -> Any:
            if self._cancel.is_set():
                raise _Cancelled()
            self._call = call = fn(left)
            return call

        return attempt

    def _sleep(self, seconds: float) -> None:
        if self._cancel.wait(seconds):
            raise _Cancelled()

    def _first_ended(self, outcome: Any) -> None:
        if self._cancel.is_set():  # cancelled by the caller: neither an outcome nor a retry
            self._plan.close()
            return
        try:
            step = settle(self._plan, outcome)
            if type(step) is Done:
                self._plan.close()
                self._decided(step.result, step.error)
                return
        except BaseException as exc:
            self._plan.close()
            self._decided(None, exc)
            return
        self._start(step)

    def _start(self, step: Step) -> None:
        threading.Thread(
            target=self._context.run, args=(self._go_on, step), name="mission-control-retry", daemon=True
        ).start()

    def _go_on(self, step: Step) -> None:
        try:
            call = self._ex.drive(self._plan, step, self._functions, sleep=self._sleep)
        except _Cancelled:
            return
        except BaseException as exc:
            self._decided(None, exc)
        else:
            self._decided(call, None)

    def _decided(self, call: Any, error: BaseException | None) -> None:
        try:
            if error is None:
                self._call = call
                self._final.set_result(call)
            else:
                if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
                    self._call = error
                self._final.set_exception(error)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass

    # -- grpc.Future -----------------------------------------------------------------

    def _settled(self, timeout: float | None) -> concurrent.futures.Future[Any]:
        """The final outcome, with grpc's exceptions for a timeout and a cancelled call."""
        try:
            self._final.exception(timeout)
        except concurrent.futures.CancelledError:
            raise grpc.FutureCancelledError() from None
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        return self._final

    def result(self, timeout: float | None = None) -> Any:
        return self._settled(timeout).result().result()

    def exception(self, timeout: float | None = None) -> BaseException | None:  # type: ignore[override]
        return self._settled(timeout).exception()

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._final.add_done_callback(lambda _: fn(self))

    def cancel(self) -> bool:
        """As grpc's: True when the call was still going (its attempt in flight is
        cancelled and no retry or fallback follows), False once it has ended."""
        if self._final.done() or not self._final.cancel():
            return False
        self._final.set_running_or_notify_cancel()  # wakes whoever waits for the result
        self._cancel.set()
        call = self._call
        if call is not None:
            call.cancel()
        return True

    def cancelled(self) -> bool:
        return self._final.cancelled()

    def running(self) -> bool:
        return not self._final.done()

    def done(self) -> bool:
        return self._final.done()

    # -- grpc.Call: the deciding attempt's --------------------------------------------

    def _error(self) -> BaseException | None:
        return None if self._final.cancelled() else self._final.exception()

    def initial_metadata(self) -> Any:
        self._error()
        return None if self._call is None else self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._error()
        return None if self._call is None else self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        error = self._error()
        if self._final.cancelled():
            return grpc.StatusCode.CANCELLED
        if isinstance(error, MissionControlError):
            return error.grpc_code
        return self._call.code()  # type: ignore[no-any-return]

    def details(self) -> str:
        error = self._error()
        if self._final.cancelled():
            return "Locally cancelled by application!"
        if isinstance(error, MissionControlError):
            return str(error)
        return self._call.details()  # type: ignore[no-any-return]

    def is_active(self) -> bool:
        return not self._final.done()

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return None if self._call is None else self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._final.done():
            return False
        self._final.add_done_callback(lambda _: callback())
        return True
