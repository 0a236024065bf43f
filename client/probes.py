"""The fleet probe permits one agent holds for one HALF_OPEN breaker.

The control plane lets the whole fleet send at most ``success_threshold`` probe calls at
once, so a permit this agent does not use is a probe no other agent may send. Every
permit therefore either runs a probe or goes back: when it expires, when the agent stopped
wanting to call the service, and when it belongs to a breaker generation that is not (or
no longer) the one in force. Give-backs name the generation they belong to, so a late one
never frees a permit of a later HALF_OPEN. A grant names itself (its series and number):
one delivered twice gives one permit. A probe names the grant it runs under, and the
stream that grant came over (:class:`RunningProbes`): after a reconnect the control plane
hears which probes of the stream before still run, and no result is taken for a permit
it was not made under.

Pure logic with an injected ``now``; the caller holds the service's lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .permit_ids import Permit

__all__ = [
    "ASKING_SECS",
    "USE_MARGIN_SECS",
    "FleetProbe",
    "GiveBack",
    "GrantsTaken",
    "ProbePermits",
    "RunningProbes",
    "use_by",
]

#: An agent that has not wanted to call a HALF_OPEN service for this long gives its
#: unused permits back (agents ask again every 100 ms while they want to call).
ASKING_SECS = 1.0
#: How long before its TTL ends here a permit is used no more (at most a tenth of the TTL).
#: The control plane's hold on a permit runs from when it granted it — the TTL, then the
#: policy's timeout for the probe begun at its end — and a probe must end within that hold:
#: once the hold is over the permit may be granted again, beside that probe, to an agent
#: asking then (this agent cut off meanwhile, its stream taken for a killed holder's). The
#: grant arrived here after it was made (its way over the network, a stalled stream): that
#: delay, up to this, is taken off the time left to begin the probe in, so a probe begun in
#: time ends within the hold (its call bounded by the policy's timeout). The two processes'
#: monotonic clocks differ in rate by far less.
USE_MARGIN_SECS = 0.5
#: Grant identities remembered (a HALF_OPEN grants few; the oldest are forgotten first).
GRANTS_REMEMBERED = 256


def use_by(received: float, ttl: float) -> float:
    """When a permit received at ``received`` with ``ttl`` is last used (this clock)."""
    return received + ttl - min(USE_MARGIN_SECS, max(0.0, ttl / 10))


class FleetProbe(str):
    """The probe kind "fleet", with the breaker generation of the permit it runs under
    (its outcome counts for that HALF_OPEN only), the grant's number (0: not said) and
    the stream the grant came over (:attr:`.LocalView.stream`)."""

    generation: int
    number: int
    stream: int

    def __new__(cls, generation: int, number: int = 0, stream: int = 0) -> FleetProbe:
        probe = super().__new__(cls, "fleet")
        probe.generation, probe.number, probe.stream = generation, number, stream
        return probe


class RunningProbes:
    """The fleet probes this agent runs, by (grant number, stream of the grant)."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: Counter[tuple[int, int]] = Counter()

    def started(self, probe: FleetProbe) -> None:
        self._running[(probe.number, probe.stream)] += 1

    def ended(self, probe: str | None) -> None:
        key = (getattr(probe, "number", 0), getattr(probe, "stream", 0))
        if self._running[key] > 1:
            self._running[key] -= 1
        else:
            self._running.pop(key, None)

    def before(self, stream: int) -> list[int]:
        """Grant numbers of the probes still running under grants of a stream before
        ``stream`` (their permits went with it)."""
        return sorted({n for (n, s) in self._running if s < stream and n})

    def any_before(self, stream: int) -> bool:
        """Whether a probe under a grant of a stream before ``stream`` still runs: the agent
        asks for no permit meanwhile (the control plane counts that probe in flight)."""
        return any(s < stream for (_, s) in self._running)


@dataclass(frozen=True, slots=True)
class GiveBack:
    """Unused permits to return to the control plane."""

    generation: int
    count: int


class GrantsTaken:
    """The probe grants taken, by identity, so that one delivered twice is taken once."""

    __slots__ = ("_taken",)

    def __init__(self) -> None:
        #: (generation, series, number), oldest first.
        self._taken: dict[tuple[int, int, int], None] = {}

    def first_time(self, generation: int, identity: tuple[int, int]) -> bool:
        """Whether the grant ``identity`` (series, number) of ``generation`` arrives for
        the first time (one not named, number 0, always does); remembers it."""
        if identity[1] == 0:
            return True
        key = (generation, *identity)
        if key in self._taken:
            return False
        self._taken[key] = None
        if len(self._taken) > GRANTS_REMEMBERED:
            del self._taken[next(iter(self._taken))]
        return True


class ProbePermits:
    """Expiry times of the permits held, all of one breaker generation."""

    __slots__ = ("expiries", "generation", "taken", "wanted_at")

    def __init__(self) -> None:
        #: Expiry times, each naming its grant (:class:`.Permit`).
        self.expiries: list[float] = []
        self.generation = 0
        self.wanted_at = -1e18
        self.taken = GrantsTaken()

    def __len__(self) -> int:
        return len(self.expiries)

    def want(self, now: float) -> None:
        """The agent wants to call the service now (it asked for, or looked for, a permit)."""
        self.wanted_at = now

    def add(
        self,
        generation: int,
        count: int,
        expiry: float,
        known: int | None,
        now: float,
        identity: tuple[int, int] = (0, 0),
    ) -> list[GiveBack]:
        """Permits granted for ``generation``; ``known`` is the breaker generation this
        agent was last told (None = none yet); ``identity`` the grant's (series, number),
        (0, 0) when not said. Returns what goes straight back; a grant already taken gives
        nothing (its permits are held, or were used or given back once)."""
        if not self.taken.first_time(generation, identity):
            return []
        if known is not None and generation < known:
            return [GiveBack(generation, count)]  # for a HALF_OPEN already over
        if self.expiries and generation < self.generation:
            return [GiveBack(generation, count)]
        back = self.supersede(generation)
        self.generation = generation
        self.expiries.extend([Permit(expiry, identity[1])] * count)
        # a grant may arrive before the agent's next call: it has ASKING_SECS to use it
        self.wanted_at = max(self.wanted_at, now)
        return back

    def take(self, generation: int, now: float) -> tuple[int | None, list[GiveBack]]:
        """Use one permit for a probe of ``generation``, if one is held and valid: the
        number of its grant (0: not said), or None."""
        self.want(now)
        back = self.supersede(generation)
        back += self.lapse(now)
        if self.expiries and self.generation == generation:
            return getattr(self.expiries.pop(), "number", 0), back
        return None, back

    def lapse(self, now: float) -> list[GiveBack]:
        """Permits that expired, or all of them when the agent stopped wanting to call."""
        if not self.expiries:
            return []
        if now - self.wanted_at > ASKING_SECS:
            count, self.expiries = len(self.expiries), []
        else:
            kept = [t for t in self.expiries if t > now]
            count, self.expiries = len(self.expiries) - len(kept), kept
        return [GiveBack(self.generation, count)] if count else []

    def supersede(self, generation: int) -> list[GiveBack]:
        """The breaker is at ``generation`` now: permits of an earlier one go back (a
        grant for a later one may arrive before the breaker's new state does)."""
        if not self.expiries or generation <= self.generation:
            return []
        count, self.expiries = len(self.expiries), []
        return [GiveBack(self.generation, count)]

    def forget(self) -> None:
        """The stream is gone: the control plane frees this agent's permits itself."""
        self.expiries = []
