"""A follower passes on to its agents the leader's breaker states that are newer than its own.

A follower learns breaker states from etcd. While etcd is away the leader keeps deciding from
memory (it closes a HALF_OPEN whose probes succeeded, opens a breaker again, moves an OPEN on
to HALF_OPEN on time) and pushes each decision to its own agents at once; the follower's
view stays what etcd last said. The leader pushes every breaker on the follower's link as to
any agent (:mod:`.relay`), so the follower knows the leader's state. When it is newer than the
follower's own, the follower's agents are told the leader's, at once and on every later push
of the breaker, until the follower's own catches up (once etcd answers, the leader's write
comes back through the watch). Newer: the leader's state rests on a later etcd revision than
the follower's (``Breaker.revision``: the stored state each last read or wrote), or on the
same one and differs — a transition the leader decided from memory since, or a decision the
follower made itself while it led, never stored and superseded by the leader now (I2). A
later revision on the follower's side (an operator's write it read first) keeps its own. An
older state the follower reads meanwhile (a watch that lags, a reload) does not take its
agents back.

Only the leader the link goes to now is heard. A new link's snapshot replaces what an earlier
one said (a new leader's view is the one in force: a deposed one's decisions it never stored
are superseded). With no link up, what was passed on stays while etcd is away for this
replica — nothing newer can be learnt, and going back to the follower's older state would
take its agents back — a HALF_OPEN (or an OPEN whose wait is over) then marked ``no_grants``,
as no permit can come. Once etcd answers (no link up) or this replica leads, its own view is
in force again: it follows etcd (I2), so a leader deposed meanwhile holds nobody.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from mission_control.resilience.v1 import control_plane_pb2 as pb

#: (revision, generation, state) of a breaker's state.
Basis = tuple[int, int, int]
#: This replica's own state of a breaker, as :data:`Basis`; None: it holds none.
Own = Callable[[str], Basis | None]
#: What a replica that holds no breaker of a name says of it: CLOSED, never stored.
NONE: Basis = (0, 0, pb.BREAKER_STATE_CLOSED)


def basis(message: pb.Breaker) -> Basis:
    return message.revision, message.generation, message.state


def newer(leader: Basis, own: Basis) -> bool:
    """Whether the leader's state is newer than this replica's own (see the module's doc)."""
    if leader[0] != own[0]:
        return leader[0] > own[0]
    return leader[1:] != own[1:]


class LeaderStates:
    """The leader's states newer than this replica's, as its link said them.

    Args:
        own: this replica's state of a breaker (None: none held), as :data:`Basis`.
        cut_off: whether etcd is away for this replica.
        leading: whether this replica leads (then nothing here is in force).
        clock: monotonic seconds (an OPEN's time left is counted down on it).
    """

    def __init__(
        self,
        own: Own,
        cut_off: Callable[[], bool],
        leading: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._own = own
        self._cut_off = cut_off
        self._leading = leading
        self._clock = clock
        #: name -> (the leader's message, when it came)
        self._held: dict[str, tuple[pb.Breaker, float]] = {}
        #: The ``no_grants`` last told of each breaker held.
        self._told: dict[str, bool] = {}
        self._up = False
        #: Called with a breaker's name when what is in force for it may have changed.
        self.on_change: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    # -- what the link says (see :class:`.relayed_marks.RelayedMarks`) ----------

    def snapshot(self, breakers: Iterable[pb.Breaker]) -> None:
        """A new link's snapshot: its leader's states replace whatever was held."""
        before = set(self._held)
        self._held.clear()
        self._up = True
        for breaker in breakers:
            self._take(breaker)
        for name in sorted(before | set(self._held)):
            self._changed(name)

    def pushed(self, breaker: pb.Breaker) -> None:
        """One breaker the leader pushed on the link up now: its latest word on it."""
        if not self._up:
            return  # before the link's snapshot: that snapshot restates it
        had = self._held.pop(breaker.name, None) is not None
        if self._take(breaker) or had:
            self._changed(breaker.name)

    def link_down(self) -> None:
        """The link ended: what was passed on stays only while etcd is away (:meth:`due`)."""
        self._up = False
        self.due()

    # -- what this replica's agents are told ------------------------------------

    def in_force(self, own: pb.Breaker) -> pb.Breaker:
        """What this replica's agents are told of ``own``'s breaker: the leader's state
        when it is newer (a held one this replica's caught up with is let go)."""
        name = own.name
        found = self._held.get(name)
        if found is None or self._leading():
            return own
        if not newer(basis(found[0]), basis(own)):
            self._drop(name)
            return own
        return self._message(name)

    def over(self, own: list[pb.Breaker]) -> tuple[list[pb.Breaker], set[str]]:
        """``own`` (this replica's breakers) as its agents are told them, with the held
        states of breakers this replica does not hold; and the names told the leader's."""
        if not self._held or self._leading():
            return own, set()
        shown = [self.in_force(message) for message in own]
        named = {message.name for message in own}
        shown += [self._message(name) for name in sorted(self._held) if name not in named]
        return shown, set(self._held)

    def due(self) -> None:
        """Let everything go once this replica's own view is in force again (it leads, or
        etcd answers with no link up); push again what is held whose mark changed (an
        OPEN's wait ended, the link went)."""
        if self._held and (self._leading() or (not self._up and not self._cut_off())):
            for name in sorted(self._held):
                self._drop(name)
                self._changed(name)
            return
        now = self._clock()
        for name in sorted(self._held):
            if self._mark(name, now) != self._told.get(name):
                self._changed(name)

    # -- internals ----------------------------------------------------------------

    def _take(self, breaker: pb.Breaker) -> bool:
        if not newer(basis(breaker), self._own(breaker.name) or NONE):
            return False
        self._held[breaker.name] = (breaker, self._clock())
        return True

    def _drop(self, name: str) -> None:
        self._held.pop(name, None)
        self._told.pop(name, None)

    def _message(self, name: str) -> pb.Breaker:
        breaker, came = self._held[name]
        now = self._clock()
        message = pb.Breaker()
        message.CopyFrom(breaker)
        if breaker.state == pb.BREAKER_STATE_OPEN:
            left = max(0, breaker.open_remaining.ToNanoseconds() - int((now - came) * 1e9))
            message.open_remaining.FromNanoseconds(left)
        message.no_grants = self._mark(name, now)
        self._told[name] = message.no_grants
        return message

    def _mark(self, name: str, now: float) -> bool:
        """``no_grants`` of a held state: the leader's while its link is up; with none up,
        any HALF_OPEN (or OPEN whose wait is over): no permit can come."""
        breaker, came = self._held[name]
        if self._up:
            return breaker.no_grants
        if breaker.state == pb.BREAKER_STATE_HALF_OPEN:
            return True
        waited = breaker.open_remaining.ToNanoseconds() <= (now - came) * 1e9
        return breaker.state == pb.BREAKER_STATE_OPEN and waited

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)
