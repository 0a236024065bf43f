"""Policy timeouts lowered lately, which a new leader's wait must still count.

A leader holds a probe permit it granted for the probe TTL plus the policy's timeout *as it
was at the grant* (``ProbeGrant.hold_until``); an agent may run its probe that long. A new
leader that took over waits that hold out before it grants (``FleetBreakers.took_over``).
Counted with the timeout in force at the takeover, the wait would be too short for a permit
an earlier leader granted before the operator lowered the timeout: the new leader would
grant beside a probe still running under the old one (I3). So each lowering is kept for as
long as a permit granted just before it may be held — the TTL plus the old timeout — and
the wait counts with the highest timeout of those.

A replica sees a lowering when etcd tells it, as the leader of the time did, give or take
the watch's lag; one started after a lowering does not know the timeout before it (its
wait counts the timeout it reads).

A breaker made before this replica read the stored policies (an outcome reported while
the first load is still to come, or the store away at the start) takes the defaults as a
stand-in: its policy read then is no lowering, since no leader granted under a timeout
this replica merely did not know yet. Once the policies are read, the defaults of a
service with none stored are the policy in force (the leader grants under them too), and
a policy put later that lowers the timeout is a lowering like any other.

Pure logic with times passed in (monotonic seconds).
"""

from __future__ import annotations

__all__ = ["LoweredTimeouts"]

#: Lowerings kept per breaker (the highest counts; more are rarely in play at once).
KEPT = 8


class LoweredTimeouts:
    """Per breaker: (old timeout, until when a permit granted under it may be held)."""

    __slots__ = ("_lowered", "_read", "_stand_ins")

    def __init__(self) -> None:
        self._lowered: dict[str, list[tuple[float, float]]] = {}
        #: Whether the stored policies have been read (True: none are to be read).
        self._read = True
        #: Breakers made before then, with the defaults as a stand-in for their policy.
        self._stand_ins: set[str] = set()

    def policies_unread(self) -> None:
        """The stored policies are still to be read (a replica that loads them)."""
        self._read = False

    def policies_read(self) -> None:
        """The stored policies have been read and put in force: what a breaker holds from
        now on is the policy in force, also the defaults of a service with none stored."""
        if not self._read:
            self._read = True
            self._stand_ins.clear()

    def made(self, name: str) -> None:
        """``name`` was just made, with the policy in force here."""
        if not self._read:
            self._stand_ins.add(name)

    def changed(self, name: str, old: float, new: float, probe_ttl: float, now: float) -> None:
        """``name``'s policy timeout went from ``old`` to ``new`` at ``now``."""
        if name in self._stand_ins:
            self._stand_ins.discard(name)
            return  # ``old`` was the defaults' stand-in, no timeout granted under
        if new >= old:
            return
        kept = [(t, until) for t, until in self._lowered.get(name, []) if until > now]
        kept.append((old, now + probe_ttl + old))
        self._lowered[name] = sorted(kept, reverse=True)[:KEPT]

    def highest(self, name: str, current: float, since: float) -> float:
        """The timeout a wait from ``since`` counts: ``current``, or a higher one lowered
        late enough that a permit granted under it may still be held at ``since``."""
        lowered = self._lowered.get(name)
        if not lowered:
            return current
        return max([current, *(t for t, until in lowered if until > since)])

    def forget(self, name: str) -> None:
        self._lowered.pop(name, None)
        self._stand_ins.discard(name)
