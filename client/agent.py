"""What an agent creates once: :class:`MissionControl`, and :meth:`~MissionControl.guard`
for any call that is not gRPC (an LLM's HTTP API, DuckDB, object storage)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from .config import ErrorHandlingConfig, load_config_file
from .connection import ControlPlaneConnection
from .executor import Executor, _Call, _deadline
from .policy import ServicePolicy
from .telemetry import Telemetry, telemetry_from_env
from .view import LocalView

__all__ = ["Guard", "MissionControl"]

F = TypeVar("F", bound=Callable[..., Any])

PolicySource = ErrorHandlingConfig | Mapping[str, ServicePolicy] | str | Path | None


def _policies(
    config: PolicySource,
) -> Callable[[str], ServicePolicy] | Mapping[str, ServicePolicy] | None:
    if config is None:
        return None
    if isinstance(config, str | Path):
        config = load_config_file(config)
    if isinstance(config, ErrorHandlingConfig):
        return config.policy_for
    return config


class MissionControl:
    """An agent's link to Mission Control: the local view, the control-plane stream and
    the executor every protected call goes through.

    Args:
        agent: this agent's name (e.g. ``"research-agent"``), reported with its outcomes.
        control_plane: ``host:port`` of the control plane, or several; None runs alone
            on ``config`` (or the seed defaults).
        config: policies to enforce until (or without) the control plane: a TOML file of
            the seed's format, an :class:`ErrorHandlingConfig`, or a mapping.
        session_id: this run's id (default: a random one).
        services: services the agent calls (announced to the control plane).
        credentials: TLS credentials for the control-plane channel (e.g.
            ``grpc.ssl_channel_credentials(ca, key, cert)`` for mutual TLS).
        token: this agent's bearer token, when the control plane requires agent tokens.
        telemetry: OpenTelemetry hooks; by default from the ``OTEL_*`` environment (off
            unless an OTLP endpoint is set); False turns it off.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        agent: str,
        *,
        control_plane: str | Sequence[str] | None = None,
        config: PolicySource = None,
        session_id: str | None = None,
        services: Sequence[str] = (),
        flush_interval: float = 0.05,
        credentials: grpc.ChannelCredentials | None = None,
        telemetry: Telemetry | bool | None = None,
        token: str | None = None,
    ) -> None:
        self.agent = agent
        self.session_id = session_id or uuid.uuid4().hex
        self.view = LocalView(_policies(config))
        if telemetry is None or telemetry is True:
            telemetry = telemetry_from_env("agent", agent)
        self.telemetry: Telemetry | None = telemetry or None
        if self.telemetry is not None:
            self.telemetry.observe(
                "mission_control.breaker.state",
                "breaker state as this agent enforces it (1 CLOSED, 2 OPEN, 3 HALF_OPEN, 4-6 operator)",
                self._breaker_states,
            )
        self.connection: ControlPlaneConnection | None = None
        if control_plane:
            endpoints = [control_plane] if isinstance(control_plane, str) else list(control_plane)
            self.connection = ControlPlaneConnection(
                endpoints,
                agent,
                self.session_id,
                self.view,
                services=services,
                flush_interval=flush_interval,
                credentials=credentials,
                telemetry=self.telemetry,
                token=token,
            )
        self.executor = Executor(
            self.view, self.connection, agent=agent, session_id=self.session_id, telemetry=self.telemetry
        )

    def start(self) -> MissionControl:
        if self.connection is not None:
            self.connection.start()
        return self

    def close(self) -> None:
        if self.connection is not None:
            self.connection.stop()
        if self.telemetry is not None:
            self.telemetry.shutdown()

    def _breaker_states(self) -> list[tuple[float, dict[str, str]]]:
        found = []
        now = self.view.clock()
        for name, state in list(self.view.services.items()):
            fleet = self.view.fleet_in_force(state, now)
            value = fleet.state if fleet is not None else state.local.state
            found.append((float(value), {"breaker": name, "error.agent": self.agent}))
        return found

    def __enter__(self) -> MissionControl:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self.view.connected

    def wait_connected(self, timeout: float) -> bool:
        """Block until the control plane's snapshot arrived (or ``timeout``)."""
        return self.connection is not None and self.connection.connected_event.wait(timeout)

    def policy(self, service: str) -> ServicePolicy:
        """The policy enforced for ``service`` right now."""
        return self.view.get(service).policy

    def guard(
        self,
        service: str,
        *,
        operation: str | None = None,
        kind: str | None = None,
        timeout: float | None = None,
        cost: Mapping[str, float] | None = None,
        fallbacks: Mapping[str, Callable[..., Any]] | None = None,
    ) -> Guard:
        """Protect calls to ``service``: as a decorator (sync or async functions; retries
        and fallbacks apply) or as a context manager (``with`` / ``async with``; one
        attempt, no retry).

        Args:
            operation: name reported in errors (default: the function's name).
            kind: ``"llm"``, ``"storage"`` or ``"other"``, to name failures (default:
                guessed from the service name).
            timeout: a tighter limit than the policy's, in seconds.
            cost: weighted quota use per call, e.g. ``{"llm_tokens": 800}``.
            fallbacks: service name -> a callable with the same arguments, tried in
                the policy's ``fallbacks`` order when this service cannot serve.
        """
        return Guard(self.executor, service, operation, kind, timeout, cost, fallbacks)


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
    ) -> None:
        self.executor = executor
        self.service = service
        self.operation = operation
        self.kind = kind
        self.timeout = timeout
        self.cost = cost
        self.fallbacks = fallbacks
        self._entered: contextvars.ContextVar[list[tuple[_Call, str | None, Any]]] = contextvars.ContextVar(
            f"guard-{id(self)}"
        )

    # -- decorator ---------------------------------------------------------------

    def __call__(self, func: F) -> F:
        operation = self.operation or func.__name__
        ex = self.executor
        telemetry = ex.telemetry
        span_name = f"{self.service} {operation}"
        options: dict[str, Any] = {
            "operation": operation,
            "kind": self.kind,
            "timeout": self.timeout,
            "cost": self.cost,
        }
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async def attempt(left: float) -> Any:
                    token = _deadline.set(time.monotonic() + left)
                    try:
                        return await func(*args, **kwargs)
                    finally:
                        _deadline.reset(token)

                fallbacks = _bind(self.fallbacks, args, kwargs)
                if telemetry is None:
                    return await ex.run_async(self.service, attempt, fallbacks=fallbacks, **options)
                with telemetry.start_span(span_name, {"error.service": self.service}):
                    return await ex.run_async(self.service, attempt, fallbacks=fallbacks, **options)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            def attempt(left: float) -> Any:
                token = _deadline.set(time.monotonic() + left)
                try:
                    return func(*args, **kwargs)
                finally:
                    _deadline.reset(token)

            fallbacks = _bind(self.fallbacks, args, kwargs)
            if telemetry is None:
                return ex.run(self.service, attempt, fallbacks=fallbacks, **options)
            with telemetry.start_span(span_name, {"error.service": self.service}):
                return ex.run(self.service, attempt, fallbacks=fallbacks, **options)

        return run  # type: ignore[return-value]

    # -- context manager -----------------------------------------------------------

    def _enter(self) -> tuple[_Call, str | None]:
        call, probe = self.executor.admit(
            self.service,
            self.operation or self.service,
            kind=self.kind,
            timeout=self.timeout,
            cost=self.cost,
        )
        return call, probe

    def _exit(self, call: _Call, probe: str | None, exc: BaseException | None) -> BaseException | None:
        """Record the outcome; returns the error to raise instead of ``exc``, if any."""
        ex = self.executor
        ex.release(call)
        if exc is None and ex.clock() > call.deadline:
            exc = TimeoutError()
        if exc is None:
            ex.record(call, probe, None)
            return None
        if not isinstance(exc, Exception):
            return None  # KeyboardInterrupt, CancelledError: not an outcome
        failure = ex.classify(call, exc)
        ex.record(call, probe, failure)
        return ex._with_context(call, failure.error)

    def __enter__(self) -> Guard:
        call, probe = self._enter()
        token = _deadline.set(call.deadline)
        stack = self._entered.get(None) or []
        self._entered.set([*stack, (call, probe, token)])
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        stack = self._entered.get()
        call, probe, token = stack[-1]
        self._entered.set(stack[:-1])
        _deadline.reset(token)
        error = self._exit(call, probe, exc)
        if error is not None and error is not exc:
            raise error

    async def __aenter__(self) -> Guard:
        call, probe = self._enter()
        timer = asyncio.timeout(call.deadline - time.monotonic())
        await timer.__aenter__()
        stack = self._entered.get(None) or []
        self._entered.set([*stack, (call, probe, timer)])
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        stack = self._entered.get()
        call, probe, timer = stack[-1]
        self._entered.set(stack[:-1])
        try:
            await timer.__aexit__(exc_type, exc, tb)
        except TimeoutError as timed_out:
            exc = timed_out
        error = self._exit(call, probe, exc)
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
