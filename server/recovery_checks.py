"""Recovery checks: the leader learns that an OPEN breaker's service serves again without
sending it a real call, and moves the breaker to HALF_OPEN at once.

A breaker learns of a recovery only by waiting out its OPEN wait and then probing; calls
kept off a service that has recovered meanwhile are false positives, and a shorter wait
sends more calls into an outage. With a policy's ``recovery_check`` the leader asks the
service (see :mod:`.recovery_asks`) every ``interval_secs`` while one of its breakers is
OPEN — only then: nothing is asked of a CLOSED or HALF_OPEN service — one check per
(service, target) and interval however many agents and endpoints, at most ``max_running``
at once, of them at most ``max_per_service`` for one service (over all its endpoints) and
``max_per_address`` against one health server, so a service whose health server hangs
never holds the slots another's check needs; where a bound is reached, a key with no check
running takes the place of the oldest check of a key running several. A check that has not answered when the
next is due does not hold it back (up to :func:`per_target` run at once per target: as
many as its timeout spans intervals, 3 to 8): a target that answers slowly while it is
unwell is seen well one interval after it is, not once a check in flight timed out.
A HALF_OPEN the wait began is checked too while it lets one probe out: that probe may have
gone while the service was still slow, and holds the HALF_OPEN for its timeout; a SERVING
answer lets the rest of ``success_threshold`` out at once (:meth:`FleetBreakers.widen`).
A ``SERVING`` answer moves each OPEN breaker of the service to HALF_OPEN through the
engine (pushed to agents, written to etcd by the one writer, like a wait that ended), so
real probe calls confirm the recovery. An OPEN that followed a failed probe may not be
ended by a check before the first half of its wait (:meth:`CircuitBreaker.may_recover`).
Followers ask nothing; a new leader starts the checks on its first turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import service_of
from mission_control.client.recovery_check import MIN_INTERVAL_SECS, RecoveryCheck, asked_about
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .engine import CHECK_REASON, FleetBreakers
from .recovery_asks import ANSWERS, SERVING, TargetAsker

_log = logging.getLogger("mission_control.server.recovery_checks")

Asker = Callable[[RecoveryCheck], Awaitable[str]]
#: (service, target, health service): what one check asks.
Key = tuple[str, str, str]
#: Most checks running at once: a fleet of many OPEN services does not open sockets without bound.
MAX_RUNNING = 32
#: How often the OPEN breakers whose policy names no check are looked at again in any case.
UNCHECKED_SECS = 1.0
#: Checks that may run at once against one (service, target): as many as its timeout spans
#: intervals (one interval's check is not held back by a slow one, so a target that
#: answers slowly while unwell is seen well one interval after it is), at least
#: :data:`MIN_PER_TARGET` and at most :data:`MAX_PER_TARGET` (a target that never answers
#: gets no more).
MIN_PER_TARGET = 3
MAX_PER_TARGET = 8
#: Checks that may run at once for one service, over all its endpoints and targets: with
#: "{endpoint}" each endpoint is a target of its own, and a service on a health server
#: that never answers would otherwise hold every one of ``max_running`` (its checks wait
#: out their timeout, up to 60 s), so that no other service's check starts.
MAX_PER_SERVICE = MAX_PER_TARGET
#: Checks that may run at once against one health server (host:port, or a URL's), over
#: all the services it answers for: many services checked on one server that hangs
#: leave the other half of ``max_running`` to the others.
MAX_PER_ADDRESS = MAX_RUNNING // 2
#: Most services counted by name in the statistics (the rest under "(other)").
_NAMED = 1000


def per_target(check: RecoveryCheck) -> int:
    """How many of ``check``'s checks may run at once against its target."""
    spans = math.ceil(check.timeout_secs / check.interval_secs - 1e-9)
    return max(MIN_PER_TARGET, min(MAX_PER_TARGET, spans))


def address_of(target: str) -> str:
    """The server a check's target names: ``host:port``, or an http(s) URL's host and port."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        return f"{parts.scheme}://{parts.netloc.lower()}"
    return target.lower()


class RecoveryChecks:
    """Runs the recovery checks of the OPEN breakers while this replica leads.

    Args:
        breakers: the fleet's breakers; its change listeners tell which are OPEN.
        leading: whether this replica decides transitions now.
        ask: asks one check's target, answering one of :data:`ANSWERS` (never raises).
    """

    def __init__(
        self,
        breakers: FleetBreakers,
        leading: Callable[[], bool],
        *,
        ask: Asker | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_running: int = MAX_RUNNING,
        max_per_service: int = MAX_PER_SERVICE,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self._breakers = breakers
        self._leading = leading
        self._asker = TargetAsker() if ask is None else None
        self._ask: Asker = ask if ask is not None else self._asker  # type: ignore[assignment]
        self._clock = clock
        self.max_running = max_running
        self.max_per_service = max_per_service
        self.max_per_address = max_per_address
        self._open: set[str] = set()
        #: Breakers of ``_open`` whose policy names no check: left out of the walk every
        #: ``every`` seconds (15,000 OPEN in a mass outage cost the loop most of its time) and
        #: looked at again at a policy change, or every ``UNCHECKED_SECS`` in any case.
        self._unchecked: set[str] = set()
        self._unchecked_at = float("-inf")
        #: Breakers the walks looked at, in all (what they cost).
        self.visited = 0
        #: The checks running per key, oldest first.
        self._running: dict[Key, list[asyncio.Task[None]]] = {}
        #: Checks running per service, and per address (see :func:`address_of`).
        self._by_service: Counter[str] = Counter()
        self._by_address: Counter[str] = Counter()
        #: Checks whose asking raised, logged once each (not at every interval).
        self._failed: set[Key] = set()
        self._last: dict[Key, float] = {}
        self.checks_by_service: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.half_opens = 0
        #: HALF_OPENs whose lone probe a check's SERVING answer let others join.
        self.widened = 0
        self._opened = asyncio.Event()
        breakers.change_listeners.append(self._on_breaker)

    def _on_breaker(self, message: pb.Breaker, *_: object) -> None:
        waited = message.state == pb.BREAKER_STATE_HALF_OPEN and not message.reason.startswith(CHECK_REASON)
        self._unchecked.discard(message.name)
        if message.state == pb.BREAKER_STATE_OPEN or waited:
            self._open.add(message.name)
            self._opened.set()
        else:
            self._open.discard(message.name)

    def policy_changed(self) -> None:
        """A policy changed: one may name a check now, looked at by the next turn."""
        self._open |= self._unchecked
        self._unchecked.clear()

    async def run(self, every: float = MIN_INTERVAL_SECS) -> None:
        """Start the checks that are due every ``every`` seconds; none while following."""
        try:
            while True:
                if not self._open and not self._unchecked:  # nothing to check: no turn is spent
                    self._opened.clear()
                    await self._opened.wait()
                if self._leading():
                    self.start_due(self._clock())
                else:
                    self._cancel_all()
                await asyncio.sleep(every)
        finally:
            self._cancel_all()
            if self._asker is not None:
                await self._asker.close()

    def due(self, now: float) -> dict[Key, RecoveryCheck]:
        """The checks to run now: one per (service, target) with a breaker OPEN that a
        check may end, whose last check started at least its interval ago, while fewer
        than :func:`per_target` of its checks run."""
        found: dict[Key, RecoveryCheck] = {}
        if not now - UNCHECKED_SECS < self._unchecked_at <= now:
            self.policy_changed()
            self._unchecked_at = now
        for name in list(self._open):
            breaker = self._breakers.find(name)
            self.visited += 1
            if breaker is None or not (breaker.state is BreakerState.OPEN or breaker.may_widen()):
                self._open.discard(name)
                continue
            check = breaker.policy.recovery_check
            if check is None:
                self._open.discard(name)
                self._unchecked.add(name)
                continue
            if breaker.state is BreakerState.OPEN and not breaker.may_recover(now):
                continue
            key = (service_of(name), check.target, asked_about(check.health_service, name))
            if len(self._running.get(key, ())) >= per_target(check):
                continue
            if now - self._last.get(key, float("-inf")) < check.interval_secs:
                continue
            found[key] = check
        return found

    def start_due(self, now: float) -> int:
        """Start the checks that are due, the longest unchecked first, while fewer than
        ``max_running`` run in all, ``max_per_service`` for its service and
        ``max_per_address`` against its server; returns how many started."""
        due = sorted(self.due(now).items(), key=lambda item: self._last.get(item[0], float("-inf")))
        started = 0
        for key, check in due:
            address = address_of(check.target)
            if not self._room_for(key, address):
                continue  # its share is taken: the next service's check may start
            self._last[key] = now
            task = asyncio.get_running_loop().create_task(
                self._check(key, check), name=f"recovery check {key[0]}"
            )
            self._running.setdefault(key, []).append(task)
            self._by_service[key[0]] += 1
            self._by_address[address] += 1
            task.add_done_callback(lambda t, key=key, a=address: self._ended(key, a, t))  # type: ignore[misc]
            started += 1
        return started

    def running(self) -> int:
        """Checks running now, over all targets."""
        return sum(len(tasks) for tasks in self._running.values())

    def _room_for(self, key: Key, address: str) -> bool:
        """Whether a check of ``key`` may start now. Where it would pass a bound (in all,
        its service's, its server's), a key with no check running takes the place of the
        oldest check of a key running two or more within every bound passed: a newer
        check of that key is still asking, and the key that has none would otherwise wait
        for a hung server's checks to time out (they wait up to 60 s)."""
        full = [
            (lambda k: True) if self.running() >= self.max_running else None,
            (lambda k: k[0] == key[0]) if self._by_service[key[0]] >= self.max_per_service else None,
            (lambda k: address_of(k[1]) == address)
            if self._by_address[address] >= self.max_per_address
            else None,
        ]
        bounds = [within for within in full if within is not None]
        if not bounds:
            return True
        if key in self._running:
            return False  # it is asking already: it waits for its turn
        others = [k for k, tasks in self._running.items() if len(tasks) >= 2 and all(b(k) for b in bounds)]
        if not others:
            return False
        victim = max(others, key=lambda k: len(self._running[k]))
        oldest = self._running[victim][0]
        self._ended(victim, address_of(victim[1]), oldest)  # its place is free now
        oldest.cancel()
        return True

    def _ended(self, key: Key, address: str, task: asyncio.Task[None]) -> None:
        tasks = self._running.get(key)
        if tasks is None or task not in tasks:
            return  # cancelled with the rest, or to make room (already forgotten)
        tasks.remove(task)
        if not tasks:
            del self._running[key]
        for counts, name in ((self._by_service, key[0]), (self._by_address, address)):
            counts[name] -= 1
            if counts[name] <= 0:
                del counts[name]

    async def _check(self, key: Key, check: RecoveryCheck) -> None:
        service = key[0]
        try:
            if check.health_service != key[2]:  # about one endpoint
                check = dataclasses.replace(check, health_service=key[2])
            answer = await self._ask(check)
        except Exception:  # an asker that raises after all: an answer, never a lost task
            if key not in self._failed:  # once per check, not at each interval
                if len(self._failed) >= _NAMED:
                    self._failed.clear()
                self._failed.add(key)
                _log.exception("recovery check of %s failed", check.target)
            answer = "error"
        answer = answer if answer in ANSWERS else "error"
        self._count(service, answer)
        if answer == SERVING and self._leading():
            self.recovered(key, f"{CHECK_REASON}{check.target} {SERVING}")

    def recovered(self, key: Key, reason: str) -> int:
        """Move every OPEN breaker of the key's service and target to HALF_OPEN (those a
        check may end now), and let a HALF_OPEN's lone probe be joined by the rest of
        ``success_threshold``; returns how many moved."""
        service, target, health_service = key
        moved = 0
        for name in sorted(self._open):
            breaker = self._breakers.find(name)
            check = breaker.policy.recovery_check if breaker is not None else None
            if check is None or service_of(name) != service:
                continue
            if (check.target, asked_about(check.health_service, name)) != (target, health_service):
                continue
            if self._breakers.recover(name, reason) is not None:
                moved += 1
            elif self._breakers.widen(name):
                self.widened += 1
        self.half_opens += moved
        return moved

    def _count(self, service: str, answer: str) -> None:
        if service not in self.checks_by_service and len(self.checks_by_service) >= _NAMED:
            service = "(other)"
        self.checks_by_service[service] += 1
        self.answers[answer] += 1

    def _cancel_all(self) -> None:
        for tasks in list(self._running.values()):
            for task in list(tasks):
                task.cancel()
        self._running.clear()
        self._by_service.clear()
        self._by_address.clear()
        self._last.clear()

    def add_to(self, stats: pb.ErrorStatistics) -> None:
        """Put the counts in ``stats`` (fields 72-74)."""
        stats.recovery_checks_by_service.update(self.checks_by_service)
        stats.recovery_check_answers.update(self.answers)
        stats.recovery_check_half_opens = self.half_opens
