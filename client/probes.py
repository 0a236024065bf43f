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

A grant says when the granter's hold on its permit ends (``ProbeGrant.hold_until``, wall
clock): a probe under it is cut to end by then, less :data:`HOLD_SKEW_SECS`, whatever this
agent's own policy timeout, and a permit with too little of its hold left to be of use
goes back unused (:func:`last_use`). That keeps I3 when the grant reached this agent late
(stalled links on the way) or the granter was told a shorter timeout than this agent. The
hold is read on this agent's clock through the offset of the sender's clock measured from
the messages it sends (``ConnectResponse.sent_at``, :mod:`.clock_offset`): the clocks of
the control plane's replicas and of the agents may be apart by any amount, and
:data:`HOLD_SKEW_SECS` covers only the smallest delay of a message and the clocks' drift.
(A relaying follower passes the hold on read on its own clock the same way.) Before a
message of the sender has said its clock, or from an older sender, the wall clocks are
taken to agree within :data:`HOLD_SKEW_SECS`. (A clock-free bound would have to count from
something the agent knows came before the grant — its own ask — which a grant does not
name, and a grant made after a long wait for a free permit would arrive spent; a
hop-by-hop age misses the time a grant spends stalled in a stream.) A grant without
``hold_until`` (an older granter) is counted from its arrival alone, as before.

Pure logic with an injected ``now``; the caller holds the service's lock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .permit_ids import Permit

__all__ = [
    "ASKING_SECS",
    "HOLD_SKEW_SECS",
    "USE_MARGIN_SECS",
    "FleetProbe",
    "GiveBack",
    "GrantsTaken",
    "ProbePermits",
    "RunningProbes",
    "hold_end",
    "last_use",
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
#: A probe ends this long before the granter's hold does (``ProbeGrant.hold_until``): the
#: smallest delay of a message on the way and the clocks' drift when the sender's clock
#: offset is measured (:mod:`.clock_offset`); how far the wall clocks may be apart when not.
HOLD_SKEW_SECS = 0.5
#: A permit is used no later than while this share of the policy's timeout is left of its
#: hold: a probe cut shorter would likely time out, and count as a failure.
USEFUL_HOLD_SHARE = 0.5
#: Grant identities remembered (a HALF_OPEN grants few; the oldest are forgotten first).
GRANTS_REMEMBERED = 256


def use_by(received: float, ttl: float) -> float:
    """When a permit received at ``received`` with ``ttl`` is last used (this clock)."""
    return received + ttl - min(USE_MARGIN_SECS, max(0.0, ttl / 10))


def hold_end(received: float, wall_received: float, hold_until: float, offset: float | None = None) -> float:
    """When a probe under a permit received at ``received`` (this monotonic clock, read at
    ``wall_received`` on the wall clock) ends at the latest: the granter's ``hold_until``
    (the sender's wall clock) on this clock, less :data:`HOLD_SKEW_SECS`. ``offset`` is what
    takes the sender's wall clock to this monotonic one (:class:`.ClockOffset`, from the
    messages it sent); None (no sample yet, an older sender): this wall clock is taken for
    the sender's."""
    if offset is not None:
        return hold_until + offset - HOLD_SKEW_SECS
    return received + (hold_until - wall_received) - HOLD_SKEW_SECS


def last_use(received: float, ttl: float, hold: float | None, timeout: float) -> float:
    """When a permit received at ``received`` with ``ttl``, whose probe must end by ``hold``
    (:func:`hold_end`; None: not said), is last used by a policy with ``timeout``."""
    at = use_by(received, ttl)
    if hold is None:
        return at
    return min(at, hold - timeout * USEFUL_HOLD_SHARE)


class FleetProbe(str):
    """The probe kind "fleet", with the breaker generation of the permit it runs under
    (its outcome counts for that HALF_OPEN only), the grant's number (0: not said), the
    stream the grant came over (:attr:`.LocalView.stream`) and when the call must end by
    (:func:`hold_end`; infinite when the grant did not say)."""

    generation: int
    number: int
    stream: int
    hold_end: float

    def __new__(
        cls, generation: int, number: int = 0, stream: int = 0, hold: float = float("inf")
    ) -> FleetProbe:
        probe = super().__new__(cls, "fleet")
        probe.generation, probe.number, probe.stream, probe.hold_end = generation, number, stream, hold
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
        hold: float = float("inf"),
    ) -> list[GiveBack]:
        """Permits granted for ``generation``; ``known`` is the breaker generation this
        agent was last told (None = none yet); ``identity`` the grant's (series, number),
        (0, 0) when not said; ``hold`` when its probe ends at the latest. Returns what goes
        straight back (with a permit already past its use); a grant already taken gives
        nothing (its permits are held, or were used or given back once)."""
        if not self.taken.first_time(generation, identity):
            return []
        if known is not None and generation < known:
            return [GiveBack(generation, count)]  # for a HALF_OPEN already over
        if self.expiries and generation < self.generation:
            return [GiveBack(generation, count)]
        back = self.supersede(generation)
        self.generation = generation
        if expiry <= now:  # too little of its hold is left for a probe (a late grant)
            return [*back, GiveBack(generation, count)]
        self.expiries.extend([Permit(expiry, identity[1], hold)] * count)
        # a grant may arrive before the agent's next call: it has ASKING_SECS to use it
        self.wanted_at = max(self.wanted_at, now)
        return back

    def take(self, generation: int, now: float) -> tuple[Permit | None, list[GiveBack]]:
        """Use one permit for a probe of ``generation``, if one is held and valid (it names
        its grant's number, 0 when not said, and when its probe ends by), or None."""
        self.want(now)
        back = self.supersede(generation)
        back += self.lapse(now)
        if self.expiries and self.generation == generation:
            permit = self.expiries.pop()
            return permit if isinstance(permit, Permit) else Permit(permit), back
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
