"""A call that meets its service's fleet breaker HALF_OPEN without a probe permit waits a
little for the HALF_OPEN to end, rather than going to its fallback (or its spool) at once.

A HALF_OPEN lasts about one round of probes: the permits, the probe calls, their reports and
the control plane's decision. A recovery check that saw the service serve again begins most
of them, and they then end CLOSED within tens of milliseconds; a call refused meanwhile is
stopped although the service would have served it. So a call that finds the breaker
HALF_OPEN and no permit held here waits, asking for a permit (every 100 ms at most, as a
refused call does), and goes on as soon as the breaker is CLOSED (an ordinary call), a
permit is held (it runs as a probe), or the hold is over: at most :data:`HOLD_SECS`, and at
most :data:`HOLD_SHARE` of the call's time. Nothing is sent meanwhile, so the fleet still
sends no more than ``success_threshold`` probes (I3), and a HALF_OPEN that opens again
refuses the held calls as before: no call reaches a failing service, it only learns so
later (by the hold).

A call holds only while this agent is connected (a permit or a CLOSED can come only over the
link; without it the HALF_OPEN is held by the lost-link rules and calls are refused at once),
the time it held counts against its own timeout, and at most :data:`MAX_HELD` calls of a
process hold at once (each held ``.future()`` waits on a thread): the others are refused at
once, as before.

Pure logic with an injected ``now``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .breaker import BreakerState

if TYPE_CHECKING:
    from .view import LocalView, ServiceState

#: The longest a call waits for a HALF_OPEN to end.
HOLD_SECS = 0.5
#: ... and at most this share of the call's own time (its timeout, or its caller's deadline).
HOLD_SHARE = 0.5
#: How often a held call looks again.
LOOK_SECS = 0.005
#: The most calls of one process holding at once.
MAX_HELD = 64


def hold_until(timeout: float, deadline: float | None, now: float) -> float:
    """Until when a call of ``timeout`` seconds (within ``deadline``, if its caller has one)
    may wait for a HALF_OPEN, from ``now``."""
    left = timeout if deadline is None else min(timeout, deadline - now)
    return now + max(0.0, min(HOLD_SECS, HOLD_SHARE * left))


def waits(view: LocalView, state: ServiceState, now: float) -> bool:
    """Whether a call to ``state``'s service would now be refused only for want of a probe
    permit of a fleet HALF_OPEN (and may wait for it to end)."""
    if not view.connected:
        return False
    fleet = view.fleet_in_force(state, now)
    return fleet is not None and fleet.state is BreakerState.HALF_OPEN and not len(state.permits)


class Holds:
    """The calls of a process holding now, each until its hold ends (at most ``most``): a
    call that ends its hold says so, and one abandoned meanwhile (cancelled) lapses."""

    def __init__(self, most: int = MAX_HELD) -> None:
        self.most = most
        self._until: dict[object, float] = {}
        self._lock = threading.Lock()

    def begin(self, call: object, until: float, now: float) -> bool:
        """Whether ``call`` may hold until ``until``."""
        with self._lock:
            if len(self._until) >= self.most:
                for other, ends in list(self._until.items()):
                    if ends <= now:
                        del self._until[other]
                if len(self._until) >= self.most:
                    return False
            self._until[call] = until
            return True

    def end(self, call: object) -> None:
        with self._lock:
            self._until.pop(call, None)

    def __len__(self) -> int:
        return len(self._until)
