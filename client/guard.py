"""``mc.guard(...)``: protection for calls that are not gRPC (an LLM's HTTP API, DuckDB,
object storage), as a decorator (retries and fallbacks apply) or a context manager (one
attempt)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .admission import Ticket
from .deadline import _deadline
from .executor import Executor
from .outcomes import Outcomes
from .spool import WriteSpool
from .spool_aio import AsyncWriteSpool
from .write_attempts import attempt_of_write

__all__ = ["Guard"]

F = TypeVar("F", bound=Callable[..., Any])


class _Entered:
    """One ``with`` block in progress: what its exit needs. ``previous`` is the deadline to
    put back when it is the innermost block still open in its context."""

    __slots__ = ("deadline", "flow", "previous", "ticket", "timer")

    def __init__(self, ticket: Ticket, previous: float | None, timer: Any = None) -> None:
        self.ticket = ticket
        self.deadline = ticket.deadline
        self.previous = previous
        self.timer = timer
        self.flow = _flow()


#: Blocks open in this context, in the order they were entered: one variable for every
#: guard (a variable per guard would stay in the context for ever). Each block finds its
#: own entry here: generators can leave blocks in another order than they entered them.
_open: contextvars.ContextVar[tuple[_Entered, ...]] = contextvars.ContextVar(
    "mission_control_guards", default=()
)


def _flow() -> tuple[int, int]:
    """The thread and asyncio task a block runs in (one Guard may be used by several)."""
    loop = asyncio._get_running_loop()  # None outside asyncio, without raising (fast path)
    task = None if loop is None else asyncio.current_task(loop)
    return threading.get_ident(), id(task)


def _opened(entered: _Entered) -> None:
    _open.set((*_open.get(), entered))
    _deadline.set(entered.deadline)


def _closed(entered: _Entered) -> None:
    """Take ``entered`` out of its context's blocks and put the deadline back: the one
    before it if it was the innermost block, else the next block will."""
    blocks = _open.get()
    at = next((i for i, b in enumerate(blocks) if b is entered), None)
    if at is None:  # closed in another context (an async generator finalised by asyncio)
        if _deadline.get() == entered.deadline:
            _deadline.set(entered.previous)
        return
    _open.set(blocks[:at] + blocks[at + 1 :])
    if at + 1 < len(blocks):
        blocks[at + 1].previous = entered.previous
    else:
        _deadline.set(entered.previous)


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
        endpoint: str | None = None,
        spool: Callable[[str, Callable[[tuple[Any, ...], dict[str, Any]], Any]], Any] | None = None,
    ) -> None:
        self.executor = executor
        self.service = service
        self.endpoint = endpoint
        self.operation = operation
        self.kind = kind
        self.timeout = timeout
        self.cost = cost
        self.fallbacks = fallbacks
        self.idempotent = idempotent
        self.outcomes = outcomes
        self._spool = spool
        self.spool: WriteSpool | AsyncWriteSpool | None = None  # the function's spool, once decorated
        self._mine: list[_Entered] = []  # this guard's blocks still open

    # -- decorator ---------------------------------------------------------------

    def __call__(self, func: F) -> F:
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            # Its body runs after the call has returned the generator: nothing would be
            # protected, bounded or counted. A block inside the generator protects it.
            raise TypeError(
                f"@guard cannot protect the generator function {func.__qualname__!r}: its body "
                "runs only as it is iterated; use `with mc.guard(...)` (or `async with`) "
                "inside it, around the iteration"
            )
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
        if self._spool is not None:
            return self._spooled(func, options, span_name)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async def attempt(_left: float) -> Any:
                    return await func(*args, **kwargs)

                fallbacks = _bind(self.fallbacks, args, kwargs)
                target = ex.target(self.service, self.endpoint)
                if telemetry is None:
                    return await ex.run_async(target, attempt, fallbacks=fallbacks, **options)
                with telemetry.start_span(span_name, {"error.service": self.service}):
                    return await ex.run_async(target, attempt, fallbacks=fallbacks, **options)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            def attempt(_left: float) -> Any:
                with attempt_of_write():
                    return func(*args, **kwargs)

            fallbacks = _bind(self.fallbacks, args, kwargs)
            target = ex.target(self.service, self.endpoint)
            if telemetry is None:
                return ex.run(target, attempt, fallbacks=fallbacks, **options)
            with telemetry.start_span(span_name, {"error.service": self.service}):
                return ex.run(target, attempt, fallbacks=fallbacks, **options)

        return run  # type: ignore[return-value]

    def _spooled(self, func: F, options: dict[str, Any], span_name: str) -> F:
        """``func`` with a write spool: a write the service cannot take now is kept (an
        ``async def`` function gets an asyncio spool, see :mod:`.spool_aio`)."""
        if self.spool is not None:
            raise TypeError(
                "a guard with a spool protects one function: make one guard (and spool) per function"
            )
        assert self._spool is not None
        ex, telemetry = self.executor, self.executor.telemetry
        if inspect.iscoroutinefunction(func):
            return self._spooled_async(func, options, span_name)

        def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            def attempt(_left: float) -> Any:
                with attempt_of_write():
                    return func(*args, **kwargs)

            fallbacks = _bind(self.fallbacks, args, kwargs)
            if telemetry is None:
                return ex.run(self.service, attempt, fallbacks=fallbacks, **options)
            with telemetry.start_span(span_name, {"error.service": self.service}):
                return ex.run(self.service, attempt, fallbacks=fallbacks, **options)

        spool = self.spool = self._spool(func.__qualname__, call)

        @functools.wraps(func)
        def write(*args: Any, **kwargs: Any) -> Any:
            return spool.write(args, kwargs)

        write.spool = spool  # type: ignore[attr-defined]
        return write  # type: ignore[return-value]

    def _spooled_async(self, func: F, options: dict[str, Any], span_name: str) -> F:
        assert self._spool is not None
        ex, telemetry = self.executor, self.executor.telemetry

        async def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            async def attempt(_left: float) -> Any:
                with attempt_of_write():
                    return await func(*args, **kwargs)

            fallbacks = _bind(self.fallbacks, args, kwargs)
            if telemetry is None:
                return await ex.run_async(self.service, attempt, fallbacks=fallbacks, **options)
            with telemetry.start_span(span_name, {"error.service": self.service}):
                return await ex.run_async(self.service, attempt, fallbacks=fallbacks, **options)

        spool = self.spool = self._spool(func.__qualname__, call)

        @functools.wraps(func)
        async def write(*args: Any, **kwargs: Any) -> Any:
            return await spool.write(args, kwargs)

        write.spool = spool  # type: ignore[attr-defined]
        return write  # type: ignore[return-value]

    # -- context manager -----------------------------------------------------------

    def _enter(self) -> Ticket:
        target = self.executor.target(self.service, self.endpoint)
        return self.executor.admit(
            target, self.operation or self.service, kind=self.kind, timeout=self.timeout, cost=self.cost
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
        try:
            failure = ex.classify(ticket, exc, self.outcomes)
        except Exception:  # whatever went wrong deciding, the ticket is never kept
            ex.abandon(ticket)
            raise
        ex.record(ticket, failure)
        return ex.with_context(failure.error, ticket.service, ticket.operation)

    def _take(self) -> _Entered:
        """This guard's block being left: the latest one of this thread and task."""
        mine = self._mine
        if len(mine) == 1:  # the common case: one block at a time
            return mine.pop()
        flow = _flow()
        entered = next((e for e in reversed(mine) if e.flow == flow), mine[-1])
        mine.remove(entered)
        return entered

    def __enter__(self) -> Guard:
        ticket = self._enter()
        entered = _Entered(ticket, _deadline.get())
        self._mine.append(entered)
        _opened(entered)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        entered = self._take()
        try:
            error = self._exit(entered.ticket, exc)
        finally:
            _closed(entered)
        if error is not None and error is not exc:
            raise error

    async def __aenter__(self) -> Guard:
        ticket = self._enter()
        try:
            timer = asyncio.timeout_at(
                asyncio.get_running_loop().time() + (ticket.deadline - self.executor.clock())
            )
            await timer.__aenter__()
        except BaseException:
            self.executor.release(ticket)
            self.executor.abandon(ticket)
            raise
        entered = _Entered(ticket, _deadline.get(), timer)
        self._mine.append(entered)
        _opened(entered)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        entered = self._take()
        try:
            try:
                await entered.timer.__aexit__(exc_type, exc, tb)
            except TimeoutError as timed_out:
                exc = timed_out
            except BaseException:  # the timer could not be left: no outcome
                self.executor.release(entered.ticket)
                self.executor.abandon(entered.ticket)
                raise
            error = self._exit(entered.ticket, exc)
        finally:
            _closed(entered)
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
