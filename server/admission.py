"""Which services may have a fleet breaker: every service a policy names, and a bounded
number of others that agents report on.

An endpoint's breaker (``service/endpoint``) of a service a policy names takes one of the
policy's ``max_endpoints`` places, shared fairly between agents (see ``endpoint_places``);
past them its reports are refused and counted per service (agents count those calls under
the service's own breaker), and one CLOSED and unreported for the policy's
``endpoint_idle_secs`` is forgotten like an idle service (an OPEN or HALF_OPEN one is kept
until it has closed and idled: forgetting it would end its wait early). Endpoints of a service no policy
names are names like any other.

Agents choose the service names in their reports, so a breaker per name would let one
client create breakers without end (memory, snapshot size, etcd keys). A name no policy
covers is *admitted* only while the admitting agent holds fewer than ``per_agent`` such
names and the fleet fewer than ``total``; an admitted name whose breaker stays CLOSED and
unreported for ``idle_secs`` is forgotten (in memory, and in etcd by the leader), which
frees its place. An OPEN or HALF_OPEN one is kept, like an endpoint's, and starts idling
when it closes: forgetting it would tell every agent it is CLOSED, ending its wait early
(I1). A breaker loaded from the store takes a place like any other.

Finding the idle ones costs what changed, not the number held: walking every breaker and
every admitted name each second took 27 ms at 15,000 (loaded from the store, no policy
naming them). Each admitted name waits in a heap keyed by the time it may be idle (last
reported plus ``idle_secs``), looked at again then; a breaker made since the last look (a
report, a load) is the only one checked for a place; a policy change, or new limits, make
the next look take everything once. An OPEN or HALF_OPEN breaker's idle time starts when it
closes (the engine's change listeners say when); one an operator holds is looked at again
every ``idle_secs``, and at once when it is CLOSED.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mission_control.client.breaker import BreakerState, Transition
from mission_control.client.policy import ServicePolicy, service_of
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .endpoint_places import EndpointPlaces
from .engine import FleetBreakers
from .policies import PolicyBook

#: A breaker is forgotten only CLOSED: forgetting an OPEN or HALF_OPEN one would end its
#: wait early for agents that had not been told (they call the failing service); an
#: operator's states are kept.
_FORGETTABLE = frozenset({BreakerState.CLOSED})
#: States whose idle time starts only once they are over (when the breaker closes).
_WAITING = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN})

_log = logging.getLogger("mission_control.server.admission")


@dataclass(frozen=True)
class AdmissionLimits:
    """Bounds on breakers for services no policy names."""

    per_agent: int = 64
    total: int = 1024
    idle_secs: float = 600.0


@dataclass
class _Admitted:
    last_seen: float
    agent: str


@dataclass
class ServiceAdmission:
    """Decides whether a report may create (or move) the breaker of ``service``."""

    policies: PolicyBook
    breakers: FleetBreakers
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    clock: Callable[[], float] = time.monotonic
    #: Names no policy covers that have a breaker -> when last reported, and by whom.
    admitted: dict[str, _Admitted] = field(default_factory=dict)
    #: Reports refused because a cap was reached.
    refused: int = 0
    #: Endpoint breakers of services a policy names, by service.
    endpoints: dict[str, EndpointPlaces] = field(default_factory=dict)
    #: Endpoint reports refused for want of a place, by service.
    endpoints_refused: Counter[str] = field(default_factory=Counter)
    #: Endpoints that gave their place up to another agent's, to forget.
    _given_up: list[str] = field(default_factory=list)
    _per_agent: Counter[str] = field(default_factory=Counter)
    #: (time, name): when each admitted name is looked at next, and older entries left
    #: behind (an entry counts only while it equals ``_due_at[name]``).
    _due: list[tuple[float, str]] = field(default_factory=list)
    _due_at: dict[str, float] = field(default_factory=dict)
    #: Breakers made since the last look (each may take a place).
    _made: set[str] = field(default_factory=set)
    #: The next look takes every breaker and admitted name (a policy changed, new limits).
    _rescan: bool = True
    _limits_seen: AdmissionLimits | None = None
    #: Admitted names looked at by :meth:`idle`, in all (what it costs).
    looked_at: int = 0

    def __post_init__(self) -> None:
        self.breakers.made_listeners.append(self._made.add)
        self.breakers.change_listeners.append(self._breaker_changed)
        self.policies.listeners.append(self._policy_changed)

    def allows(self, agent: str, service: str, *, trusted: bool = False) -> bool:
        """Whether ``agent`` may report on ``service`` (admitting it when there is room).

        ``trusted`` callers (replicas relaying for their agents) are bound by the total
        cap only.
        """
        now = self.clock()
        if self.policies.stored(service) is not None:
            return True
        policy = self.endpoint_policy(service)
        if policy is not None:
            return self._endpoint_allows(agent, service, policy, now)
        found = self.admitted.get(service)
        if found is None and self.breakers.find(service) is not None:
            found = self._admit(service, _Admitted(now, ""))  # loaded from the store
        if found is not None:
            found.last_seen = now
            return True
        if len(self.admitted) >= self.limits.total or (
            not trusted and self.held_by(agent) >= self.limits.per_agent
        ):
            self.refused += 1
            return False
        self._admit(service, _Admitted(now, agent))
        return True

    def endpoint_policy(self, name: str) -> ServicePolicy | None:
        """The stored policy of the service ``name`` is an endpoint of, if any."""
        if "/" not in name:
            return None
        stored = self.policies.stored(service_of(name))
        return None if stored is None else stored[0]

    def _endpoint_allows(self, agent: str, name: str, policy: ServicePolicy, now: float) -> bool:
        service = service_of(name)
        places = self.endpoints.setdefault(service, EndpointPlaces())
        allowed, given_up = places.admit(agent, name, policy.max_endpoints, now, self.breakers)
        if given_up is not None:
            _log.info("endpoint %s gives its place up to %s of another agent", given_up, name)
            self._given_up.append(given_up)
        if not allowed:
            self.refused += 1
            self.endpoints_refused[service] += 1
        return allowed

    def known(self, service: str) -> bool:
        """Whether ``service`` has (or may have without admission) a breaker."""
        return self.policies.stored(service) is not None or self.breakers.find(service) is not None

    def taken_again(self, name: str) -> bool:
        """Whether ``name``, found idle, was reported on since (it holds a place again)."""
        if name in self.admitted:
            return True
        places = self.endpoints.get(service_of(name)) if "/" in name else None
        return places is not None and name in places.places

    def held_by(self, agent: str) -> int:
        """Places taken by names ``agent`` got admitted."""
        return self._per_agent[agent]

    def _admit(self, name: str, entry: _Admitted) -> _Admitted:
        self.admitted[name] = entry
        if entry.agent:
            self._per_agent[entry.agent] += 1
        self._schedule(name, entry.last_seen + self.limits.idle_secs)
        return entry

    def _drop(self, name: str) -> None:
        entry = self.admitted.pop(name)
        self._due_at.pop(name, None)
        if not entry.agent:
            return
        self._per_agent[entry.agent] -= 1
        if self._per_agent[entry.agent] <= 0:
            del self._per_agent[entry.agent]

    def _schedule(self, name: str, at: float) -> None:
        known = self._due_at.get(name)
        if known is None or at < known:  # a later time: the earlier entry looks again
            self._due_at[name] = at
            heapq.heappush(self._due, (at, name))

    def _breaker_changed(self, message: pb.Breaker, old: BreakerState | None, _: Transition | None) -> None:
        entry = self.admitted.get(message.name)
        if entry is None:
            return
        breaker = self.breakers.find(message.name)
        if old in _WAITING or (breaker is not None and breaker.state in _WAITING):
            entry.last_seen = max(entry.last_seen, self.clock())  # its idle time starts once closed
        elif breaker is not None and breaker.state in _FORGETTABLE and old not in (None, *_FORGETTABLE):
            self._schedule(message.name, entry.last_seen + self.limits.idle_secs)  # an operator's, let go

    def _policy_changed(self, service: str, policy: ServicePolicy | None) -> None:
        self._rescan = True

    def idle(self) -> list[str]:
        """Admitted names to forget now: CLOSED and not reported on for ``idle_secs``
        (an OPEN or HALF_OPEN one starts idling when it closes; an operator's is kept)."""
        now = self.clock()
        out = self._given_up_endpoints()
        if self._rescan or self.limits is not self._limits_seen:
            self._rescan, self._limits_seen = False, self.limits
            self._made.clear()
            made = self.breakers.names()
            for name in self.admitted:
                self._schedule(name, now)
        else:
            made = sorted(self._made)
            self._made.clear()
        for name in made:  # breakers adopted from the store take a place
            if name in self.admitted or self.policies.stored(name) is not None or name in out:
                continue
            if self.breakers.find(name) is None:
                continue  # made, then forgotten
            if self.endpoint_policy(name) is not None:
                self.endpoints.setdefault(service_of(name), EndpointPlaces()).adopt(name, now)
            else:
                self._admit(name, _Admitted(now, ""))
        out += self._idle_endpoints(now)
        later: list[tuple[str, float]] = []
        while self._due and self._due[0][0] <= now:
            at, name = heapq.heappop(self._due)
            if self._due_at.get(name) != at:
                continue  # an older entry: looked at earlier since
            del self._due_at[name]
            entry = self.admitted.get(name)
            if entry is None:
                continue
            self.looked_at += 1
            if self.policies.stored(name) is not None or self.endpoint_policy(name) is not None:
                self._drop(name)  # a policy covers it now: no place needed here
                continue
            breaker = self.breakers.find(name)
            if breaker is not None and breaker.state in _WAITING:
                entry.last_seen = now
                later.append((name, now + self.limits.idle_secs))
                continue
            quiet = now - entry.last_seen >= self.limits.idle_secs
            # A follower has no breaker for a name it admitted (the leader does): it keeps
            # the place for idle_secs all the same, so its per-agent cap holds.
            if quiet and (breaker is None or breaker.state in _FORGETTABLE):
                self._drop(name)
                if breaker is not None:
                    out.append(name)
            elif quiet:  # an operator's state: looked at again (and once it is CLOSED)
                later.append((name, now + self.limits.idle_secs))
            else:
                later.append((name, entry.last_seen + self.limits.idle_secs))
        for name, at in later:
            self._schedule(name, at)
        return out

    def _given_up_endpoints(self) -> list[str]:
        given_up, self._given_up = self._given_up, []
        out = []
        for name in given_up:
            places = self.endpoints.get(service_of(name))
            breaker = self.breakers.find(name)
            taken_again = places is not None and name in places.places
            if breaker is not None and breaker.state is BreakerState.CLOSED and not taken_again:
                out.append(name)
        return out

    def _idle_endpoints(self, now: float) -> list[str]:
        out = []
        for service, places in list(self.endpoints.items()):
            stored = self.policies.stored(service)
            if stored is None:  # no policy now: its endpoints are names like any other
                del self.endpoints[service]
                continue
            for name in list(places.places):
                breaker = self.breakers.find(name)
                if breaker is not None and breaker.state not in _FORGETTABLE:
                    places.touch(name, now)  # its idle time starts when it is CLOSED again
            for name in places.idle(now, stored[0].endpoint_idle_secs):
                places.drop(name)
                if self.breakers.find(name) is not None:
                    out.append(name)
        return out


async def forget_idle(admission: ServiceAdmission, forget: Callable[[str], object], every: float) -> None:
    """Forever: every ``every`` seconds, forget the idle admitted breakers."""
    while True:
        await asyncio.sleep(every)
        for name in admission.idle():
            if admission.taken_again(name):
                continue  # reported on while the names before it were forgotten
            _log.info("forgetting idle breaker %s (no policy names it)", name)
            result = forget(name)
            if asyncio.iscoroutine(result):
                await result
