"""What an agent creates once: :class:`MissionControl`, and :meth:`~MissionControl.guard`
for any call that is not gRPC (an LLM's HTTP API, DuckDB, object storage)."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .admission import known_resources, unknown_cost
from .breaker import BreakerState
from .config import ErrorHandlingConfig, load_config_file
from .connection import ControlPlaneConnection
from .errors import ConfigurationError
from .executor import Executor
from .guard import Guard
from .outcomes import Outcomes
from .policy import ServicePolicy, endpoint_problem
from .spool import WriteSpool
from .spool_aio import AsyncWriteSpool
from .telemetry import Telemetry, telemetry_from_env
from .view import LocalView

__all__ = ["BreakerView", "Guard", "MissionControl"]

_log = logging.getLogger("mission_control.client")

#: How long :meth:`MissionControl.start` waits for the control plane's first snapshot by
#: default: a control plane that answers takes milliseconds (2-77 ms on a loaded 2-core
#: machine); one that does not costs a start this once, then the local config is enforced.
START_WAIT_SECS = 2.0

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


@dataclass(frozen=True, slots=True)
class BreakerView:
    """A breaker as this agent enforces it.

    Attributes:
        state: CLOSED, OPEN, HALF_OPEN or an operator's state.
        source: "fleet" (the control plane's decision) or "local" (this agent's own).
        failures: consecutive failures while CLOSED; the failures that opened it otherwise.
            A fleet CLOSED breaker shows 0: the fleet's running count of every agent's
            failures is not pushed to agents (the control plane's ``ListBreakers`` has it).
        open_remaining: seconds until an OPEN breaker lets probes through (0 otherwise).
    """

    service: str
    state: BreakerState
    source: str
    failures: int
    open_remaining: float


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
        outcomes: per service, which exceptions count as its failures and which as the
            caller's own (see :class:`~mission_control.client.outcomes.Outcomes`).
        start_wait: how long :meth:`start` waits for the control plane's first snapshot
            (seconds; 0: it returns at once). Calls made before the snapshot arrives enforce
            ``config``, not the fleet's state: a breaker an operator forced open, or one the
            fleet opened, would not stop them.

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
        outcomes: Mapping[str, Outcomes] | None = None,
        start_wait: float = START_WAIT_SECS,
    ) -> None:
        self.agent = agent
        self.start_wait = start_wait
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
        self._spools: list[WriteSpool | AsyncWriteSpool] = []
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
            self.view,
            self.connection,
            agent=agent,
            session_id=self.session_id,
            telemetry=self.telemetry,
            outcomes=outcomes,
        )
        if self.connection is not None:
            # Forgetting start() would enforce the local defaults for ever, silently.
            self.executor.not_started = (
                f"MissionControl({agent!r}) has a control plane but was not started: call "
                ".start() (or use it as a context manager) before making protected calls"
            )

    def start(self) -> MissionControl:
        """Connect to the control plane and wait for the fleet's state — breakers and
        policies, from a control plane that has read its store (a ``partial`` snapshot, from
        one that has not, is not waited for) — for up to ``start_wait`` seconds; calls may
        go from now on (with ``config`` until the state arrives, when it did not in time:
        the link is made in the background and the state applied whenever it comes). In
        asyncio code, ``await asyncio.to_thread(mc.start)`` keeps the loop running meanwhile."""
        if self.connection is not None:
            self.connection.start()
        self.executor.not_started = None
        waits = self.connection is not None and self.start_wait > 0
        if waits and not self.connection.complete_event.wait(self.start_wait):  # type: ignore[union-attr]
            _log.warning(
                "no fleet state from the control plane within %gs (%s): enforcing the local config "
                "until it comes",
                self.start_wait,
                "connected, but it has not read its store" if self.connected else "not connected",
            )
        return self

    def close(self) -> None:
        for spool in self._spools:
            spool.close()  # what is left stays on disk for the next process
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

    def breaker(self, service: str) -> BreakerView:
        """This agent's view of ``service``'s breaker now: the fleet's while it is in force
        (connected, or fail static: see :meth:`LocalView.fleet_in_force`), else its own
        local one. Reading it makes no call."""
        state = self.view.get(service)
        now = self.view.clock()
        fleet = self.view.fleet_in_force(state, now)
        if fleet is not None:
            left = max(0.0, fleet.open_until - now) if fleet.state is BreakerState.OPEN else 0.0
            return BreakerView(service, fleet.state, "fleet", fleet.failures, left)
        with state.lock:
            local = state.local
            local.tick(now)
            failures = (
                local.failures if local.state is not BreakerState.CLOSED else local.consecutive_failures
            )
            return BreakerView(service, local.state, "local", failures, local.open_remaining(now))

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
        idempotent: bool = False,
        record: tuple[type[BaseException], ...] = (),
        ignore: tuple[type[BaseException], ...] = (),
        classify: Callable[[BaseException], str | None] | None = None,
        endpoint: str | None = None,
        spool: str | Path | None = None,
        spool_max_writes: int = 10_000,
        spool_max_bytes: int = 64 * 1024 * 1024,
        spool_replay_parallel: int = 1,
    ) -> Guard:
        """Protect calls to ``service``: as a decorator (sync or async functions; retries
        and fallbacks apply; a generator function is refused with ``TypeError``, as its
        body runs only when iterated) or as a context manager (``with`` / ``async with``;
        one attempt, no retry; each block is its own, so generators may hold one across
        ``yield``).

        Args:
            operation: name reported in errors (default: the function's name).
            kind: ``"llm"``, ``"storage"`` or ``"other"``, to name failures (default:
                guessed from the service name).
            timeout: a tighter limit than the policy's, in seconds.
            cost: weighted quota use per attempt, e.g. ``{"llm_tokens": 800}``.
            fallbacks: service name -> a callable with the same arguments, tried in
                the policy's ``fallbacks`` order when this service cannot serve.
            idempotent: the call may run twice: a sync call that returned after its
                deadline may then be retried or sent to a fallback (never otherwise).
            record / ignore / classify: how exceptions count (see :class:`Outcomes`);
                by default as the agent's ``outcomes`` for the service say.
            endpoint: an endpoint of the service (e.g. ``"openai/gpt-x"``) with a fleet
                breaker of its own (``service/endpoint``) under the service's policy,
                sharing the service's limits; past the policy's ``max_endpoints`` its
                calls go by the service's breaker. ``fallbacks`` may name endpoints.
            spool: a local directory where writes the service cannot take now are kept
                and made later, in order (see :mod:`mission_control.client.spool`); for a
                decorated function (sync, or ``async def``: replayed by an asyncio task,
                the disk written off the loop) whose arguments are JSON values or bytes. A
                spooled write returns a :class:`~mission_control.client.spool.Spooled`.
            spool_max_writes / spool_max_bytes: the spool's bound; a write beyond it is
                dropped (counted) and the caller gets the service's error.
            spool_replay_parallel: spooled writes replayed at once; 1 (the default) keeps
                their order. More is for writes whose order does not matter: the spool
                drains up to that many times faster, and a process killed while they are
                in flight may make each of them again.

        Raises:
            ConfigurationError: ``cost`` names a resource the service's policy does not
                limit (here when the policies are local, else at the call); ``endpoint``
                is not a valid endpoint name; ``spool_replay_parallel`` is below 1.
        """
        self._check_cost(service, cost)
        problems = [] if endpoint is None else [("endpoint", endpoint_problem(endpoint))]
        if spool_replay_parallel < 1:
            problems.append(("spool_replay_parallel", f"must be 1 or more, not {spool_replay_parallel}"))
        if any(problem for _, problem in problems):
            raise ConfigurationError.from_violations([(f, p) for f, p in problems if p])
        outcomes = self._outcomes_for(service, record, ignore, classify)
        spooling = None
        if spool is not None:
            bound = (spool_max_writes, spool_max_bytes, spool_replay_parallel)
            spooling = functools.partial(self._spool, service, Path(spool), kind, outcomes, bound, idempotent)
        return Guard(
            self.executor,
            service,
            operation,
            kind,
            timeout,
            cost,
            fallbacks,
            idempotent,
            outcomes,
            endpoint,
            spooling,
        )

    def _spool(
        self,
        service: str,
        directory: Path,
        kind: str | None,
        outcomes: Outcomes | None,
        bound: tuple[int, int, int],
        idempotent: bool,
        function: str,
        call: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    ) -> WriteSpool | AsyncWriteSpool:
        kind_of_spool = AsyncWriteSpool if inspect.iscoroutinefunction(call) else WriteSpool
        spool = kind_of_spool(
            directory,
            service=service,
            function=function,
            call=call,
            open_for=lambda: self._open_for(service),
            count=functools.partial(self.executor.spool_counted, service),
            outcomes=outcomes or self.executor.outcomes.get(service),
            kind=kind,
            max_writes=bound[0],
            max_bytes=bound[1],
            parallel=bound[2],
            idempotent=idempotent,
            drain_wait=lambda: self.policy(service).timeout_secs,
        )
        self._spools.append(spool)
        return spool

    def _open_for(self, service: str) -> float:
        """Seconds calls to ``service`` stay refused by its breaker (a forced one, or an
        agent not started yet: a while)."""
        if self.executor.not_started is not None:
            return 1.0
        view = self.breaker(service)
        if view.state is BreakerState.FORCED_OPEN:
            return 1.0
        return view.open_remaining

    def _check_cost(self, service: str, cost: Mapping[str, float] | None) -> None:
        # Without a control plane the policies are known now; with one, each call checks
        # against the policy in force (it may arrive after the guard is built).
        if not cost or self.connection is not None:
            return
        state = self.view.get(service)
        for resource in sorted(set(cost) - known_resources(state)):
            raise unknown_cost(state, resource)

    def _outcomes_for(
        self,
        service: str,
        record: tuple[type[BaseException], ...],
        ignore: tuple[type[BaseException], ...],
        classify: Callable[[BaseException], str | None] | None,
    ) -> Outcomes | None:
        if not (record or ignore or classify):
            return None  # the agent's outcomes for the service, read at each call
        # The call's own verdict first, then the service's (the narrower scope wins).
        wider = self.executor.outcomes.get(service)
        return Outcomes(record=record, ignore=ignore, classify=classify, base=wider)
