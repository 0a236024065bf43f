"""Probe permits a follower's relay keeps out for its agents whose streams broke.

An agent behind a follower may run its probe on after its stream to the follower broke (a
proxy reset, a network blip): given back to the leader at once, the permit would go to an
agent asking then, beside that probe (more than ``success_threshold`` probes in flight,
I3). The relay keeps such permits out instead, as the leader keeps an agent's own
(``CircuitBreaker.holder_said``): when the agent is back on this replica, its first batch
says which probes of its streams before still run (``OutcomeSummary.probes_running``);
those stay out until their results come, the rest go back then. An agent that does not
come back here leaves them to lapse at the leader with their hold (probe TTL plus the
policy's timeout). The leader never freed these permits, so it needs no word of the
probes running under them: the relay keeps that word to itself.

Pure bookkeeping by count, per service and agent; the caller is :class:`.relay.LeaderRelay`.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["GonePermits"]


class GonePermits:
    """Permits of this relay's agents whose streams broke, not given back yet."""

    def __init__(self) -> None:
        self._gone: dict[str, Counter[str]] = {}
        #: How many probes each agent said (back on a new stream) still run, per service.
        self._running: dict[str, Counter[str]] = {}

    def left(self, service: str, agent: str, permits: int) -> None:
        """``agent``'s stream broke while it held ``permits`` of ``service``."""
        self._gone.setdefault(service, Counter())[agent] += permits

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

    def said_running(self, service: str, agent: str, count: int) -> None:
        """``agent`` says ``count`` probes of ``service`` from its streams before still run."""
        running = self._running.setdefault(service, Counter())
        running[agent] = max(running[agent], count)

    def said(self, agent: str) -> dict[str, tuple[int, int]]:
        """``agent``'s first batch on its new stream here has been taken: per service,
        (permits to give back, permits whose probes still run: held for it again)."""
        out = {}
        for service, gone in self._gone.items():
            permits = gone.pop(agent, 0)
            running = self._running.get(service, Counter()).pop(agent, 0)
            if permits:
                kept = min(running, permits)
                out[service] = (permits - kept, kept)
        return out

    def clear(self, service: str) -> None:
        """A later HALF_OPEN of ``service``: the leader set these aside with the one before."""
        self._gone.pop(service, None)
        self._running.pop(service, None)
