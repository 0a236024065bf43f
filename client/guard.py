"""``mc.guard(...)``: protection for calls that are not gRPC (an LLM's HTTP API, DuckDB,
object storage), as a decorator (retries and fallbacks apply) or a context manager (one
attempt)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .admission import Ticket
from .deadline import _deadline
from .executor import Executor
from .outcomes import Outcomes

__all__ = ["Guard"]

F = TypeVar("F", bound=Callable[..., Any])


class _Entered:
    """One ``with`` block in progress: what its exit needs."""

    __slots__ = ("deadline_token", "ticket", "timer")

    def __init__(self, ticket: Ticket, deadline_token: Any, timer: Any = None) -> None:
        self.ticket = ticket
        self.deadline_token = deadline_token
        self.timer = timer


#: Blocks in progress in this context, innermost last: one variable for every guard
#: (a variable per guard would stay in the context for ever).
_entered: contextvars.ContextVar[tuple[_Entered, ...]] = contextvars.ContextVar(
    "mission_control_guards", default=()
)


class Guard:
    """Protection for calls to one service; see :meth:`MissionControl.guard`."""

    def __init__(
        self,
        executor: Executor,
        service: str,
        operation: str | None,
        kind: str | None,
        timeout: float | None,
        cost: Mapping[str, float] | None,
        fallbacks: Mapping[str, Callable[..., Any]] | None,
        idempotent: bool = False,
        outcomes: Outcomes | None = None,
    ) -> None:
        self.executor = executor
        self.service = service
        self.operation = operation
        self.kind = kind
        self.timeout = timeout
        self.cost = cost
        self.fallbacks = fallbacks
        self.idempotent = idempotent
        self.outcomes = outcomes

    # -- decorator ---------------------------------------------------------------

    def __call__(self, func: F) -> F:
        ex = self.executor
        telemetry = ex.telemetry
        operation = self.operation or func.__name__
        span_name = f"{self.service} {operation}"
        options: dict[str, Any] = {
            "operation": operation,
            "kind": self.kind,
            "timeout": self.timeout,
            "cost": self.cost,
            "idempotent": self.idempotent,
            "outcomes": self.outcomes,
        }
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async def attempt(_left: float) -> Any:
                    return await func(*args, **kwargs)

                fallbacks = _bind(self.fallbacks, args, kwargs)
                if telemetry is None:
                    return await ex.run_async(self.service, attempt, fallbacks=fallbacks, **options)
                with telemetry.start_span(span_name, {"error.service": self.service}):
                    return await ex.run_async(self.service, attempt, fallbacks=fallbacks, **options)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            def attempt(_left: float) -> Any:
                return func(*args, **kwargs)

            fallbacks = _bind(self.fallbacks, args, kwargs)
            if telemetry is None:
                return ex.run(self.service, attempt, fallbacks=fallbacks, **options)
            with telemetry.start_span(span_name, {"error.service": self.service}):
                return ex.run(self.service, attempt, fallbacks=fallbacks, **options)

        return run  # type: ignore[return-value]

    # -- context manager -----------------------------------------------------------

    def _enter(self) -> Ticket:
        return self.executor.admit(
            self.service, self.operation or self.service, kind=self.kind, timeout=self.timeout, cost=self.cost
        )

    def _exit(self, ticket: Ticket, exc: BaseException | None) -> BaseException | None:
        """Record the outcome; returns the error to raise instead of ``exc``, if any."""
        ex = self.executor
        ex.release(ticket)
        if exc is None and ex.clock() > ticket.deadline:
            exc = TimeoutError()
        if exc is None:
            ex.record(ticket, None)
            return None
        if not isinstance(exc, Exception):
            ex.abandon(ticket)  # KeyboardInterrupt, CancelledError: not an outcome
            return None
        failure = ex.classify(ticket, exc, self.outcomes)
        ex.record(ticket, failure)
        return ex.with_context(failure.error, ticket.service, ticket.operation)

    @staticmethod
    def _push(entered: _Entered) -> None:
        _entered.set((*_entered.get(), entered))

    @staticmethod
    def _pop() -> _Entered:
        stack = _entered.get()
        _entered.set(stack[:-1])
        return stack[-1]

    def __enter__(self) -> Guard:
        ticket = self._enter()
        self._push(_Entered(ticket, _deadline.set(ticket.deadline)))
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        entered = self._pop()
        _deadline.reset(entered.deadline_token)
        error = self._exit(entered.ticket, exc)
        if error is not None and error is not exc:
            raise error

    async def __aenter__(self) -> Guard:
        ticket = self._enter()
        timer = asyncio.timeout_at(
            asyncio.get_running_loop().time() + (ticket.deadline - self.executor.clock())
        )
        await timer.__aenter__()
        self._push(_Entered(ticket, _deadline.set(ticket.deadline), timer))
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        entered = self._pop()
        _deadline.reset(entered.deadline_token)
        try:
            await entered.timer.__aexit__(exc_type, exc, tb)
        except TimeoutError as timed_out:
            exc = timed_out
        error = self._exit(entered.ticket, exc)
        if error is not None and error is not exc:
            raise error


def _bind(
    fallbacks: Mapping[str, Callable[..., Any]] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Callable[[float], Any]] | None:
    if not fallbacks:
        return None
    return {name: functools.partial(_call_with, fn, args, kwargs) for name, fn in fallbacks.items()}


def _call_with(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], _left: float) -> Any:
    return fn(*args, **kwargs)
