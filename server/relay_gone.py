"""Probe permits a follower's relay keeps out for its agents whose streams broke.

An agent behind a follower may run its probe on after its stream to the follower broke (a
proxy reset, a network blip): given back to the leader at once, the permit would go to an
agent asking then, beside that probe (more than ``success_threshold`` probes in flight,
I3). The relay keeps such permits out instead, as the leader keeps an agent's own
(``CircuitBreaker.holder_said``): when the agent is back on this replica, its first batch
says which probes of its streams before still run (``OutcomeSummary.probes_running``);
those stay out until their results come, the rest go back then. An agent that has not
said by the end of the probe TTL it had to use the permit in (from when the relay handed
it out) may have died with its stream: its permits go back then, within one TTL, as the
leader's own do (``CircuitBreaker.release_probes``). Never later: the leader lets a
permit lapse at the end of its hold (the TTL plus the policy's timeout from its grant),
and a give-back after that, by count, would free another agent's permit of this relay.
The leader never freed these permits, so it needs no word of the probes running under
them: the relay keeps that word to itself.

Pure bookkeeping by count, per service and agent; the caller is :class:`.relay.LeaderRelay`.
"""

from __future__ import annotations

from collections import Counter

from .engine import PROBE_TTL_SECS

__all__ = ["GonePermits"]


class GonePermits:
    """Permits of this relay's agents whose streams broke, not given back yet."""

    def __init__(self) -> None:
        self._gone: dict[str, Counter[str]] = {}
        #: When this relay handed each agent its permit (per service; one at a time).
        self._handed: dict[tuple[str, str], float] = {}
        #: How many probes each agent said (back on a new stream) still run, per service.
        self._running: dict[str, Counter[str]] = {}

    def left(self, service: str, agent: str, permits: int, handed: float) -> None:
        """``agent``'s stream broke while it held ``permits`` of ``service``, handed to it
        at ``handed`` (monotonic seconds)."""
        self._gone.setdefault(service, Counter())[agent] += permits
        self._handed[(service, agent)] = min(handed, self._handed.get((service, agent), handed))

    def of(self, service: str, agent: str) -> int:
        gone = self._gone.get(service)
        return gone[agent] if gone is not None else 0

    def take(self, service: str, agent: str, count: int) -> None:
        """``count`` results (or give-backs) of ``agent`` under such permits passed on."""
        gone = self._gone.get(service)
        if gone is None or count <= 0:
            return
        gone[agent] -= min(count, gone[agent])
        if gone[agent] <= 0:
            del gone[agent]
            self._running.get(service, Counter()).pop(agent, None)
            self._handed.pop((service, agent), None)

    def said_running(self, service: str, agent: str, count: int) -> None:
        """``agent`` says ``count`` probes of ``service`` from its streams before still run."""
        running = self._running.setdefault(service, Counter())
        running[agent] = max(running[agent], count)

    def said(self, agent: str, now: float) -> dict[str, tuple[int, int]]:
        """``agent``'s first batch on its new stream here has been taken: per service,
        (permits to give back, permits whose probes still run: held for it again). Those
        handed out a probe TTL ago or more are not given back: they lapse at the leader."""
        out = {}
        for service, gone in self._gone.items():
            permits = gone.pop(agent, 0)
            running = self._running.get(service, Counter()).pop(agent, 0)
            handed = self._handed.pop((service, agent), now)
            if permits:
                kept = min(running, permits)
                out[service] = (permits - kept if now - handed < PROBE_TTL_SECS else 0, kept)
        return out

    def lapsed(self, now: float) -> dict[str, int]:
        """Per service, the permits whose agents did not say within a probe TTL of being
        handed them: taken out, to give back now."""
        out: dict[str, int] = {}
        for service, agent in [k for k, t in self._handed.items() if now - t >= PROBE_TTL_SECS]:
            del self._handed[(service, agent)]
            gone = self._gone.get(service)
            permits = gone.pop(agent, 0) if gone is not None else 0
            self._running.get(service, Counter()).pop(agent, None)
            if permits:
                out[service] = out.get(service, 0) + permits
        return out

    def clear(self, service: str) -> None:
        """A later HALF_OPEN of ``service``: the leader set these aside with the one before."""
        self._gone.pop(service, None)
        self._running.pop(service, None)
        for key in [k for k in self._handed if k[0] == service]:
            del self._handed[key]
