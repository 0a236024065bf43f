"""A sync unary call made with ``.future()``: it goes on without the caller.

Its first attempt runs as grpc runs it; when that ends, the outcome is recorded and, if the
plan says so, the retries and fallbacks run on a thread of their own. The object answers
as a ``grpc.Future`` and ``grpc.Call`` would: result, exception, callbacks, and the
metadata of the attempt that decided the call.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from mission_control.client.attempts import CallPlan, Done, Step
from mission_control.client.errors import MissionControlError
from mission_control.client.executor import Executor


def settle(plan: CallPlan, outcome: Any) -> Step:
    """Feed a finished attempt's outcome to ``plan``."""
    error = outcome.exception()
    if error is not None:
        return plan.failed(error)
    return plan.succeeded(outcome)


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
        self._functions = functions
        self._call = first  # the latest attempt's call, the final one once decided
        self._final: concurrent.futures.Future[Any] = concurrent.futures.Future()
        first.add_done_callback(self._first_ended)

    def _first_ended(self, outcome: Any) -> None:
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
        threading.Thread(target=self._go_on, args=(step,), name="mission-control-retry", daemon=True).start()

    def _go_on(self, step: Step) -> None:
        try:
            call = self._ex.drive(self._plan, step, self._functions)
        except BaseException as exc:
            self._decided(None, exc)
        else:
            self._decided(call, None)

    def _decided(self, call: Any, error: BaseException | None) -> None:
        if error is None:
            self._call = call
            self._final.set_result(call)
        else:
            if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
                self._call = error
            self._final.set_exception(error)

    # -- grpc.Future -----------------------------------------------------------------

    def result(self, timeout: float | None = None) -> Any:
        return self._final.result(timeout).result()

    def exception(self, timeout: float | None = None) -> BaseException | None:  # type: ignore[override]
        return self._final.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._final.add_done_callback(lambda _: fn(self))

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled()) if self._final.done() else False

    def running(self) -> bool:
        return not self._final.done()

    def done(self) -> bool:
        return self._final.done()

    # -- grpc.Call: the deciding attempt's --------------------------------------------

    def initial_metadata(self) -> Any:
        self._final.exception()
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._final.exception()
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        error = self._final.exception()
        if isinstance(error, MissionControlError):
            return error.grpc_code
        return self._call.code()  # type: ignore[no-any-return]

    def details(self) -> str:
        error = self._final.exception()
        if isinstance(error, MissionControlError):
            return str(error)
        return self._call.details()  # type: ignore[no-any-return]

    def is_active(self) -> bool:
        return not self._final.done()

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._final.done():
            return False
        self._final.add_done_callback(lambda _: callback())
        return True
