"""Which breakers time alone may change: the ones the engine's tick walks.

The tick runs every 20 ms. Walking every breaker each time cost 24 ms of CPU a tick with
15,000 stored (idle, CLOSED): the loop was busy with it for good, and on a starved machine
the lease keep-alive and the store's pings waited behind it. Time changes a breaker only
while it is OPEN (its wait ends) or holds permits (they expire, :meth:`CircuitBreaker.timed`),
so the engine marks a breaker here each time it may have become so — a report, an operator's
state, a probe granted, a stored state taken — and the tick walks the marked ones, dropping
each that time can no longer change. A full walk once per ``SWEEP_SECS`` finds any breaker
changed another way (a caller holding it), so none waits longer than that for its tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mission_control.client.breaker import CircuitBreaker

#: How often every breaker is looked at, marked or not.
SWEEP_SECS = 1.0


class TimedBreakers:
    def __init__(self) -> None:
        self._names: set[str] = set()
        self._swept = -math.inf

    def mark(self, breaker: CircuitBreaker) -> None:
        """``breaker`` changed: walked from the next tick on while time may change it."""
        if breaker.timed():
            self._names.add(breaker.name)

    def forget(self, name: str) -> None:
        self._names.discard(name)

    def due(self, breakers: Mapping[str, CircuitBreaker], now: float) -> list[CircuitBreaker]:
        """The breakers of ``breakers`` (name -> breaker) a tick at ``now`` walks."""
        if now - self._swept >= SWEEP_SECS or now < self._swept:
            self._swept = now
            self._names = {name for name, breaker in breakers.items() if breaker.timed()}
        found = []
        for name in list(self._names):
            breaker = breakers.get(name)
            if breaker is None or not breaker.timed():
                self._names.discard(name)
            else:
                found.append(breaker)
        return found

    def __len__(self) -> int:
        return len(self._names)
