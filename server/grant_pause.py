"""Telling agents that this control plane can grant no probe permit for a HALF_OPEN.

A leader grants probe permits only while its leader lease is known to hold and etcd is known
to hold the breaker's current run (:mod:`.stored_runs`), and not while an earlier leader's
permits may be in use (``FleetBreakers.took_over``). While etcd is away none of that may
come for as long as the outage lasts. Agents that still held the fleet HALF_OPEN then
refused every call for the whole outage, and for the probe TTL plus the policy's timeout
after it: worse off than an agent whose link broke, which holds the HALF_OPEN that long and
then lets its own breaker decide (README, "Fail static").

So every HALF_OPEN this replica pushes says whether its agents can get a permit now
(``Breaker.no_grants``), and when that changes it is pushed again. An agent holds a
HALF_OPEN marked so by the rules of a lost link — refusing, for the probe TTL plus the
timeout from the first such push, then its own breaker decides — and honours the fleet
HALF_OPEN again once a push no longer marks it. I3 holds as for a lost link: every permit
granted before the first mark has ended when the hold does, and none is granted while the
mark stands: before a grant, a mark is taken back on every stream (the grant follows it).

What is marked: a HALF_OPEN the leader cannot grant for because its lease or the store's
record of the run is not known to hold (``grants_unsure``): that lasts as long as etcd is
away. A mark once pushed stays while the leader cannot grant for any cause — through the
step-down and takeover that follow etcd's return, and the wait for an earlier leader's
permits after it (``grants_blocked``) — so agents that went by their own breaker during the
outage do not go back to refusing for that wait. A wait of its own (after a failover, a
restart) is not marked: it ends by itself within the probe TTL plus the timeout, as the
agents' hold would.

A follower's agents get their permits from the leader, through the follower's link to it
(:mod:`.relay`). While the link is up the follower marks what the leader marks: the leader
pushes its breakers, marks included, on the link as to any agent (:mod:`.relayed_marks`),
so the follower's agents are held by the leader's rule. The follower's own state of the
breaker may be older than the leader's (it learns states from etcd): an OPEN whose wait is
over, which its agents probe as a HALF_OPEN, is marked too; so is a HALF_OPEN the leader
has since closed from memory (it pushes the breaker CLOSED at a later generation, and grants
no permit for a CLOSED breaker): its agents are not left refusing for the whole outage.
A permit relayed to an agent here is handed out after the mark is taken back on every
stream here. With no link up no permit can come: a mark pushed stays until a leader's link
says otherwise (through a step-down, the failover after etcd's return, a leader lost
mid-outage), and while etcd is away for this replica too — no leader can be learnt — a
HALF_OPEN is marked by this replica itself.

What :meth:`GrantPause.check` looks at: the breakers last pushed HALF_OPEN, those told a
mark, and — on a follower only — those last pushed OPEN whose wait is over. A leader never
marks an OPEN, and a follower's OPEN waits in a heap keyed by the end of its wait, so that
15,000 OPEN after a mass outage cost nothing a check until their waits end (walked every
100 ms they took 14 ms of each on a leader).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.resilience.v1 import control_plane_pb2 as pb

if TYPE_CHECKING:
    from .engine import FleetBreakers

#: How often whether permits can be granted is looked at again.
CHECK_SECS = 0.1


class GrantPause:
    """Marks each HALF_OPEN pushed with whether its agents can get a permit now."""

    def __init__(
        self,
        breakers: FleetBreakers,
        leading: Callable[[], bool],
        relayed: Callable[[str, int], bool | None] = lambda name, generation: None,
        cut_off: Callable[[], bool] = lambda: False,
        every: float = CHECK_SECS,
    ) -> None:
        """``relayed(name, generation)``: what the leader says on this follower's link of
        ``name``, this replica's breaker being at ``generation`` (None: no link is up);
        ``cut_off()``: whether etcd is away for this replica."""
        self._breakers = breakers
        self._every = every
        self._checked = float("-inf")
        self._leading = leading
        self._relayed = relayed
        self._cut_off = cut_off
        #: The mark last pushed to every agent, of each breaker not told False (True, or
        #: None: not known to be alike); a breaker absent here was told False, or nothing.
        self._told: dict[str, bool | None] = {}
        #: The breakers last pushed HALF_OPEN, and those last pushed OPEN whose wait is
        #: over: every change of a breaker's state is pushed, and only those states are
        #: marked, so a breaker in neither set (nor told a mark) is not marked now and was
        #: not told so — :meth:`check` walks these sets, not the fleet.
        self._half_open: set[str] = set()
        self._waited: set[str] = set()
        #: The breakers last pushed OPEN with their wait not known over: when it ends, and
        #: (end, name) in a heap (an entry counts only while it equals ``_open[name]``).
        self._open: dict[str, float] = {}
        self._ends: list[tuple[float, str]] = []
        #: Breakers the checks looked at, in all (what they cost).
        self.looked_at = 0
        breakers.no_grants = self.marks
        breakers.before_grant = self.unmark
        breakers.change_listeners.append(self._pushed)

    def marks(self, breaker: CircuitBreaker, now: float) -> bool:
        """Whether ``breaker`` is pushed marked now: a HALF_OPEN (on a follower, also an
        OPEN whose wait is over) whose agents can get no permit (:meth:`paused`)."""
        if breaker.state is BreakerState.HALF_OPEN:
            return self.paused(breaker.name)
        waited = breaker.state is BreakerState.OPEN and breaker.open_remaining(now) <= 0
        return waited and not self._leading() and self.paused(breaker.name)

    def paused(self, name: str) -> bool:
        """Whether no probe permit of ``name`` can reach this replica's agents now, for a
        cause that may last (see the module's doc)."""
        marked = bool(self._told.get(name))
        if self._leading():
            if self._breakers.grants_unsure(name):
                return True
            return marked and self._breakers.grants_blocked(name)
        breaker = self._breakers.find(name)
        relayed = self._relayed(name, breaker.generation if breaker is not None else 0)
        if relayed is not None:
            return relayed
        return marked or self._cut_off()

    def relayed_changed(self, name: str) -> None:
        """The leader's mark of ``name`` on the link may have changed: pushed now if this
        replica's changed (not at the next check: a permit may follow it)."""
        breaker = self._breakers.find(name)
        if breaker is None or self._leading():
            return
        if self.marks(breaker, self._breakers.now()) != self._told.get(name, False):
            self._breakers.restate(name)

    def unmark(self, name: str) -> None:
        """A permit of ``name`` is about to go out: a mark that stands is taken back first,
        on every stream, so that no agent goes by its own breaker beside it."""
        if self._told.get(name) is not False and name in self._told:
            self._breakers.restate(name)

    def _pushed(self, message: pb.Breaker, *_: object) -> None:
        name = message.name
        self._tell(name, message.no_grants)
        self._open.pop(name, None)
        self._waited.discard(name)
        if message.state == pb.BREAKER_STATE_HALF_OPEN:
            self._half_open.add(name)
            return
        self._half_open.discard(name)
        if message.state == pb.BREAKER_STATE_OPEN:
            now = self._breakers.now()
            self._wait_ends(name, now + message.open_remaining.ToNanoseconds() / 1e9)

    def _wait_ends(self, name: str, at: float) -> None:
        self._open[name] = at
        heapq.heappush(self._ends, (at, name))

    def _waits_over(self, now: float) -> None:
        """Move the OPEN whose wait has ended by ``now`` to :attr:`_waited`."""
        ends = self._ends
        while ends and ends[0][0] <= now:
            at, name = heapq.heappop(ends)
            if self._open.get(name) != at:
                continue  # pushed again since
            del self._open[name]
            breaker = self._breakers.find(name)
            if breaker is None or breaker.state is not BreakerState.OPEN:
                continue  # (a change is pushed: this is a stale entry's breaker)
            left = breaker.open_remaining(now)
            if left > 0:
                self._wait_ends(name, now + left)
            else:
                self._waited.add(name)

    def policy_changed(self, service: str) -> None:
        """``service``'s policy changed: the waits of its OPEN breakers (and its
        endpoints') may end at another time, unpushed."""
        now = self._breakers.now()
        for name in [n for n in self._open if n == service or n.startswith(service + "/")]:
            breaker = self._breakers.find(name)
            if breaker is not None and breaker.state is BreakerState.OPEN:
                self._wait_ends(name, now + breaker.open_remaining(now))

    def _tell(self, name: str, mark: bool | None) -> None:
        if mark is False:
            self._told.pop(name, None)
        else:
            self._told[name] = mark

    def sent(self, messages: Iterable[pb.Breaker]) -> None:
        """A snapshot went to one agent: a mark it has that the others were not told makes
        the next check push the breaker to all."""
        for message in messages:
            if message.no_grants != self._told.get(message.name, False):
                self._tell(message.name, None)

    def check(self) -> list[str]:
        """Push every breaker whose mark changed since it was pushed; returns their names
        (in name order, as a walk of every breaker would). Only the breakers last pushed
        HALF_OPEN, or told a mark, are looked at, and on a follower those last pushed OPEN
        whose wait is over: with 15,000 stored, CLOSED, a walk of all ten times a second
        held the loop for most of each second on a busy machine, and the leader lease
        lapsed behind it."""
        changed = []
        now = self._breakers.now()
        self._waits_over(now)
        names = self._half_open | self._told.keys()
        if not self._leading():  # a leader never marks an OPEN (one told a mark is in _told)
            names |= self._waited
        for name in sorted(names):
            self.looked_at += 1
            breaker = self._breakers.find(name)
            if breaker is None:
                self._told.pop(name, None)
                self._half_open.discard(name)
                self._waited.discard(name)
                self._open.pop(name, None)
                continue
            mark = self.marks(breaker, now)
            if mark != self._told.get(name, False):
                changed.append(name)
                self._breakers.restate(name)
        return changed

    def due(self, now: float) -> None:
        """:meth:`check`, when ``every`` seconds have passed since the last (the control
        plane's timer calls it on each of its turns, leading or not)."""
        if now - self._checked >= self._every:
            self._checked = now
            self.check()
