"""A follower passes on to its agents the leader's breaker states where they differ from its own.

A follower learns breaker states from etcd. While etcd is away the leader keeps deciding from
memory (it closes a HALF_OPEN whose probes succeeded, opens a breaker again, moves an OPEN on
to HALF_OPEN on time) and pushes each decision to its own agents at once; the follower's
view stays what etcd last said. The leader pushes every breaker on the follower's link as to
any agent (:mod:`.relay`), so the follower knows the leader's state, and while the link is
up the follower's agents are told the leader's state of every breaker where it differs from
the follower's own (in generation or state): at once, and on every later push of the
breaker, until the follower's own agrees (once etcd answers, the leader's write comes back
through the watch). Which of the two is told: the one resting on the later etcd revision
(``Breaker.revision``, the stored state each last read or wrote; a write read here first, an
operator's the leader has not seen, keeps the follower's own), and on the same revision the
leader's where it differs (a transition it decided from memory since, or one the follower
decided while it led that was never stored, superseded: I2). Revisions compare only within
one etcd history (:mod:`.store_history`): the leader says the history its states rest on in
its snapshot (``Snapshot.history``), this replica knows the one its own rest on. Where the
two are the same, the later revision is told whether etcd answers here or not — the
leader's taken as no earlier than the revision its snapshot says its view was read through
(``Snapshot.read_revision``: a breaker it found absent, or whose record it could not read,
rests on that reading too, so a state this replica read before it is older) — so an
operator's `force-open` or `reset` through this replica while the leader is cut off from
etcd holds for its agents once etcd goes away for this replica too. Where they differ or
either is not known (a leader that has not read the token, or of an older version; this
replica's token not read, or let go when it found etcd lost its data) the rule is the
history's blind one: while etcd answers this replica, the later revision (its reads catch
up, and a wipe is found); while etcd is away for it, the leader's wherever it differs — the
follower's own may rest on a history etcd lost in a wipe it did not see, whose revisions run
above the new ones. (A leader whose token changes says so on the link at once, in a new
snapshot: a push resting on a new history's revision never comes under the old token.) An
older state the follower reads meanwhile (a watch that lags, a reload) does not take its
agents back. A leader that has not read etcd yet (its snapshot ``partial``) is not
heard; of a leader that has, a breaker its snapshot does not list (and it pushed nothing of
since) is CLOSED, as for its own agents.

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

#: (revision, generation, state) of a breaker's state (``Breaker.revision``: the stored
#: state it rests on, as last read or written).
Basis = tuple[int, int, int]
#: This replica's own state of a breaker, as :data:`Basis`; None: it holds none.
Own = Callable[[str], Basis | None]
#: What a replica that holds no breaker of a name says of it: CLOSED, never stored.
NONE: Basis = (0, 0, pb.BREAKER_STATE_CLOSED)


def basis(message: pb.Breaker) -> Basis:
    return message.revision, message.generation, message.state


def told(leader: Basis, own: Basis, cut_off: bool, one_history: bool = False) -> bool:
    """Whether the leader's state is told over this replica's own (see the module's doc);
    ``one_history``: both rest on revisions of the same etcd history, as known here."""
    if leader[0] != own[0] and (one_history or not cut_off):
        return leader[0] > own[0]  # a later write read here is newer
    return leader[1:] != own[1:]


class LeaderStates:
    """The leader's states, as its link said them, and which of them are told here.

    Args:
        own: this replica's state of a breaker (None: none held), as :data:`Basis`.
        names: the breakers this replica holds.
        cut_off: whether etcd is away for this replica.
        leading: whether this replica leads (then nothing here is in force).
        clock: monotonic seconds (an OPEN's time left is counted down on it).
        history: the etcd history this replica's own states rest on ("": not known; see
            :mod:`.store_history`).
    """

    def __init__(
        self,
        own: Own,
        names: Callable[[], Iterable[str]],
        cut_off: Callable[[], bool],
        leading: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        *,
        history: Callable[[], str] = lambda: "",
    ) -> None:
        self._own = own
        self._own_history = history
        self._names = names
        self._cut_off = cut_off
        self._leading = leading
        self._clock = clock
        #: name -> (the leader's last message, when it came); one not listed is CLOSED
        self._held: dict[str, tuple[pb.Breaker, float]] = {}
        #: The breakers whose leader's state was last told, with the ``no_grants`` told.
        self._shown: dict[str, bool] = {}
        self._up = False
        #: Whether a leader's complete snapshot is what :attr:`_held` holds.
        self._heard = False
        #: The etcd history the leader's states held rest on, as its snapshot said ("": not known).
        self._history = ""
        #: The revision the leader's view was read through, as its snapshot said (0: not said).
        self._read = 0
        #: Which rule told when last looked (:meth:`_rule`).
        self._was = (False, False)
        #: Called with a breaker's name when what is told of it may have changed.
        self.on_change: Callable[[str], None] | None = None

    def __len__(self) -> int:
        """How many breakers this replica's agents are told the leader's state of."""
        return len(self._shown)

    # -- what the link says (see :class:`.relayed_marks.RelayedMarks`) ----------

    def snapshot(
        self, breakers: Iterable[pb.Breaker], partial: bool = False, history: str = "", read: int = 0
    ) -> None:
        """A new link's snapshot (or a new one on it): its leader's states replace
        whatever was held; ``partial``: that leader has not read etcd yet; ``history``:
        the etcd history its states rest on ("": not known); ``read``: the revision the
        leader's view was read through (0: not said)."""
        now = self._clock()
        self._held = {b.name: (b, now) for b in breakers}
        self._up, self._heard, self._history, self._read = True, not partial, history, read
        self._was = self._rule()
        names = set(self._shown) | set(self._held) | set(self._names())
        for name in sorted(n for n in names if n in self._shown or self._leaders(n)):
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

    def says_history(self, token: str) -> bool:
        """Whether a leader's link is up now and its snapshot says the etcd history
        ``token`` (never so for "")."""
        return self._up and bool(token) and self._history == token

    # -- what this replica's agents are told ------------------------------------

    def in_force(self, own: pb.Breaker, *, to_all: bool = True) -> pb.Breaker:
        """What this replica's agents are told of ``own``'s breaker: the leader's state
        where it differs, else ``own``. ``to_all``: the answer goes to every agent; when
        it goes to one (an answer to a probe request, one stream's snapshot) and ends
        what all were told of the leader's state, the others hear it too (pushed)."""
        name = own.name
        if self._leaders(name, basis(own)):
            return self._message(name)
        if name in self._shown:
            del self._shown[name]
            if not to_all:
                self._changed(name)
        return own

    def over(self, own: list[pb.Breaker], *, to_all: bool = True) -> tuple[list[pb.Breaker], set[str]]:
        """``own`` (this replica's breakers) as its agents are told them, with the leader's
        states of breakers this replica does not hold; and the names told the leader's
        (``to_all``: as :meth:`in_force`)."""
        shown, passed = self.over_some(own, to_all=to_all)
        beyond = self.beyond({message.name for message in own})
        return shown + beyond, passed | {message.name for message in beyond}

    def over_some(self, own: list[pb.Breaker], *, to_all: bool = True) -> tuple[list[pb.Breaker], set[str]]:
        """Some of this replica's breakers as its agents are told them, and the names told
        the leader's (one slice of :meth:`over`, without the breakers it does not hold)."""
        if not self._heard or self._leading():
            return own, set()
        shown, passed = [], set()
        for message in own:
            told = self.in_force(message, to_all=to_all)
            shown.append(told)
            if told is not message:
                passed.add(message.name)
        return shown, passed

    def beyond(self, named: set[str]) -> list[pb.Breaker]:
        """The leader's states told of breakers not in ``named`` (those this replica
        holds, as :meth:`over_some` told them), in name order."""
        if not self._heard or self._leading():
            return []
        return [self._message(n) for n in sorted(self._held) if n not in named and self._leaders(n, NONE)]

    def due(self) -> None:
        """Let everything go once this replica's own view is in force again (it leads, or
        etcd answers with no link up); push again what is told whose mark changed (an
        OPEN's wait ended, the link went)."""
        if self._heard and (self._leading() or (not self._up and not self._cut_off())):
            shown = sorted(self._shown)
            self._held.clear()
            self._shown.clear()
            self._heard, self._history, self._read = False, "", 0
            for name in shown:
                self._changed(name)
            return
        rule = self._rule()
        if rule != self._was and self._heard:  # which rule tells (see :func:`told`)
            names = set(self._shown) | set(self._held) | set(self._names())
            for name in sorted(n for n in names if (n in self._shown) != self._leaders(n)):
                self._changed(name)
        self._was = rule
        now = self._clock()
        for name in sorted(self._shown):
            if self._mark(name, now) != self._shown[name]:
                self._changed(name)

    # -- internals ----------------------------------------------------------------

    def _rule(self) -> tuple[bool, bool]:
        """(etcd is away here, the leader's states and this replica's rest on one etcd
        history): which rule of :func:`told` tells."""
        own = self._own_history()
        return self._cut_off(), bool(own) and own == self._history

    def _leaders(self, name: str, own: Basis | None = None) -> bool:
        """Whether the leader's state of ``name`` differs from ``own`` (by default this
        replica's state now), and so is told."""
        if not self._heard or self._leading():
            return False
        if own is None:
            own = self._own(name) or NONE
        found = self._held.get(name)
        leader = basis(found[0]) if found is not None else NONE
        cut_off, one_history = self._rule()
        if one_history:  # its state rests on a reading at least as late as its snapshot's
            leader = (max(leader[0], self._read), *leader[1:])
        return told(leader, own, cut_off, one_history)

    def _message(self, name: str) -> pb.Breaker:
        now = self._clock()
        found = self._held.get(name)
        if found is None:
            message = pb.Breaker(name=name, state=pb.BREAKER_STATE_CLOSED, reason="not held by the leader")
            self._shown[name] = False
            return message
        breaker, came = found
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
        found = self._held.get(name)
        if found is None:
            return False
        breaker, came = found
        if self._up:
            return breaker.no_grants
        if breaker.state == pb.BREAKER_STATE_HALF_OPEN:
            return True
        waited = breaker.open_remaining.ToNanoseconds() <= (now - came) * 1e9
        return breaker.state == pb.BREAKER_STATE_OPEN and waited

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)
