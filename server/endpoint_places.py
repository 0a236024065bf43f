"""The places for endpoint breakers (``service/endpoint``) of one service a policy names,
shared fairly between the agents that report them.

A service has at most ``max_endpoints`` places (0: no endpoint breakers at all). Agents
choose endpoint names (a metadata value of a call may be one), so one agent could take every
place and leave the real endpoints of the others without a fleet breaker. So when the places
are full, a new endpoint from agent X takes the place of a CLOSED endpoint of the agent
holding the most places, provided that agent holds at least two more than X does: one agent
keeps the places no one else asks for, never more than its share of those asked for. An
OPEN or HALF_OPEN endpoint is never given up (its wait must not end early); a name that
finds no place is refused and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mission_control.client.breaker import BreakerState

from .engine import FleetBreakers


@dataclass
class _Place:
    last_seen: float
    agent: str


@dataclass
class EndpointPlaces:
    """The endpoints of one service holding a place, who took each, and what was refused."""

    places: dict[str, _Place] = field(default_factory=dict)
    held: Counter[str] = field(default_factory=Counter)

    def admit(
        self, agent: str, name: str, cap: int, now: float, breakers: FleetBreakers
    ) -> tuple[bool, str | None]:
        """Whether ``agent`` may report on ``name``, and the endpoint whose place it took
        (to be forgotten), if any."""
        place = self.places.get(name)
        if place is not None:
            place.last_seen = now
            return True, None
        if len(self.places) < cap:
            self._add(name, agent, now)
            return True, None
        given_up = self._to_give_up(agent, breakers) if cap else None
        if given_up is None:
            return False, None
        self.drop(given_up)
        self._add(name, agent, now)
        return True, given_up

    def adopt(self, name: str, now: float) -> None:
        """A breaker of the store's takes a place (held by no agent)."""
        if name not in self.places:
            self._add(name, "", now)

    def touch(self, name: str, now: float) -> None:
        """``name`` is not idle (its breaker is not CLOSED)."""
        place = self.places.get(name)
        if place is not None:
            place.last_seen = now

    def idle(self, now: float, idle_secs: float) -> list[str]:
        """Names unreported for ``idle_secs`` (the caller checks their breakers)."""
        return [name for name, place in self.places.items() if now - place.last_seen >= idle_secs]

    def drop(self, name: str) -> None:
        place = self.places.pop(name, None)
        if place is None:
            return
        self.held[place.agent] -= 1
        if self.held[place.agent] <= 0:
            del self.held[place.agent]

    def _add(self, name: str, agent: str, now: float) -> None:
        self.places[name] = _Place(now, agent)
        self.held[agent] += 1

    def _to_give_up(self, agent: str, breakers: FleetBreakers) -> str | None:
        if not self.held:
            return None
        top, most = self.held.most_common(1)[0]
        if most < self.held[agent] + 2:
            return None
        closed = [
            (place.last_seen, name)
            for name, place in self.places.items()
            if place.agent == top and _closed(breakers, name)
        ]
        return min(closed)[1] if closed else None


def _closed(breakers: FleetBreakers, name: str) -> bool:
    breaker = breakers.find(name)
    return breaker is None or breaker.state is BreakerState.CLOSED
