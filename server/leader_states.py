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
agents back. While etcd is away for the follower its own view may be older than any
revision says (etcd wiped, which it has not seen): the leader's state is in force whenever
it differs. A leader that has not read etcd yet (its snapshot ``partial``) is not heard.

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


def newer(leader: Basis, own: Basis, cut_off: bool = False) -> bool:
    """Whether the leader's state is in force over this replica's own (see the module's
    doc): with etcd away for this replica, whenever it differs."""
    if leader[0] != own[0] and not cut_off:
        return leader[0] > own[0]
    return leader[1:] != own[1:]


class LeaderStates:
    """The leader's states, as its link said them, and which of them are in force here.

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
        #: name -> (the leader's last message, when it came)
        self._held: dict[str, tuple[pb.Breaker, float]] = {}
        #: The breakers whose leader's state was last told, with the ``no_grants`` told.
        self._shown: dict[str, bool] = {}
        self._up = False
        self._partial = False
        self._was_cut = False
        #: Called with a breaker's name when what is in force for it may have changed.
        self.on_change: Callable[[str], None] | None = None

    def __len__(self) -> int:
        """How many breakers this replica's agents are told the leader's state of."""
        return len(self._shown)

    # -- what the link says (see :class:`.relayed_marks.RelayedMarks`) ----------

    def snapshot(self, breakers: Iterable[pb.Breaker], partial: bool = False) -> None:
        """A new link's snapshot (or a new one on it): its leader's states replace
        whatever was held; ``partial``: that leader has not read etcd yet."""
        now = self._clock()
        self._held = {b.name: (b, now) for b in breakers}
        self._up, self._partial = True, partial
        for name in sorted(set(self._shown) | {n for n in self._held if self._leaders(n)}):
            self._changed(name)

    def pushed(self, breaker: pb.Breaker) -> None:
        """One breaker the leader pushed on the link up now: its latest word on it."""
        if not self._up:
            return  # before the link's snapshot: that snapshot restates it
        self._held[breaker.name] = (breaker, self._clock())
        if breaker.name in self._shown or self._leaders(breaker.name):
            self._changed(breaker.name)

    def link_down(self) -> None:
        """The link ended: what was passed on stays only while etcd is away (:meth:`due`)."""
        self._up = False
        self.due()

    # -- what this replica's agents are told ------------------------------------

    def in_force(self, own: pb.Breaker) -> pb.Breaker:
        """What this replica's agents are told of ``own``'s breaker: the leader's state
        when it is in force, else ``own``."""
        name = own.name
        if name in self._held and self._leaders(name, basis(own)):
            return self._message(name)
        self._shown.pop(name, None)
        return own

    def over(self, own: list[pb.Breaker]) -> tuple[list[pb.Breaker], set[str]]:
        """``own`` (this replica's breakers) as its agents are told them, with the leader's
        states in force of breakers this replica does not hold; and the names told the
        leader's."""
        if not self._held or self._leading():
            return own, set()
        shown, passed = [], set()
        for message in own:
            told = self.in_force(message)
            shown.append(told)
            if told is not message:
                passed.add(message.name)
        named = {message.name for message in own}
        for name in sorted(self._held):
            if name not in named and self._leaders(name, NONE):
                shown.append(self._message(name))
                passed.add(name)
        return shown, passed

    def due(self) -> None:
        """Let everything go once this replica's own view is in force again (it leads, or
        etcd answers with no link up); push again what changed otherwise: whether the
        leader's state is in force (etcd went away or came back), or the mark of one
        that is (an OPEN's wait ended, the link went)."""
        if self._held and (self._leading() or (not self._up and not self._cut_off())):
            shown = sorted(self._shown)
            self._held.clear()
            self._shown.clear()
            for name in shown:
                self._changed(name)
            return
        cut = self._cut_off()
        if cut != self._was_cut:
            self._was_cut = cut
            for name in sorted(self._held):
                if self._leaders(name) != (name in self._shown):
                    self._changed(name)
        now = self._clock()
        for name in sorted(self._shown):
            if name in self._held and self._mark(name, now) != self._shown[name]:
                self._changed(name)

    # -- internals ----------------------------------------------------------------

    def _leaders(self, name: str, own: Basis | None = None) -> bool:
        """Whether the leader's state of ``name`` (held) is in force over ``own`` (by
        default this replica's state now)."""
        if self._partial or self._leading():
            return False
        if own is None:
            own = self._own(name) or NONE
        return newer(basis(self._held[name][0]), own, self._cut_off())

    def _message(self, name: str) -> pb.Breaker:
        breaker, came = self._held[name]
        now = self._clock()
        message = pb.Breaker()
        message.CopyFrom(breaker)
        if breaker.state == pb.BREAKER_STATE_OPEN:
            left = max(0, breaker.open_remaining.ToNanoseconds() - int((now - came) * 1e9))
            message.open_remaining.FromNanoseconds(left)
        message.no_grants = self._mark(name, now)
        self._shown[name] = message.no_grants
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
