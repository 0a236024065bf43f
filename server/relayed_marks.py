"""What the leader says over a follower's link of the HALF_OPENs it can grant no probe
permit for (``Breaker.no_grants``, see :mod:`.grant_pause`).

The leader pushes every breaker to a follower's link as to any agent, marked for a HALF_OPEN
it cannot grant for. A follower's agents get their permits only through that leader, so
their pushes are marked as the leader's are (the follower's own state of the breaker may be
older: it learns states from etcd, which may be the very thing away). Only what the current
link said counts: a snapshot replaces what an earlier one and the pushes since said; with
no link up nothing is known here (the follower then keeps what it told its agents).

A breaker the leader pushes CLOSED at a later generation than the follower's own counts as
marked too: the leader closed a HALF_OPEN the follower still holds (etcd, which would tell
the follower, being away) and grants no permit for a CLOSED breaker, so the follower's
agents would otherwise refuse every call until etcd returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from mission_control.resilience.v1 import control_plane_pb2 as pb


class LinkListener(Protocol):
    """Hears every breaker the link says, as :class:`RelayedMarks` does."""

    def snapshot(self, breakers: Iterable[pb.Breaker], partial: bool, history: str, read: int) -> None: ...
    def pushed(self, breaker: pb.Breaker) -> None: ...
    def link_down(self) -> None: ...


class RelayedMarks:
    """The leader's ``no_grants`` per breaker, as the link up now said it."""

    def __init__(self) -> None:
        self._marks: dict[str, bool] = {}
        #: The generation of each breaker the leader last pushed CLOSED.
        self._closed: dict[str, int] = {}
        self._up = False
        #: Called with a breaker's name when what the leader says of it may have changed.
        self.on_change: Callable[[str], None] | None = None
        #: Told every snapshot, push and end of the link after this (see :mod:`.leader_states`).
        self.listeners: list[LinkListener] = []

    def get(self, name: str, generation: int = 0) -> bool | None:
        """Whether the leader says no permit of ``name`` can be granted now (for this
        replica's breaker at ``generation``: also when the leader pushed it CLOSED at a
        later one); None: no link is up (nothing is known)."""
        if not self._up:
            return None
        return self._marks.get(name, False) or self._closed.get(name, -1) > generation

    def snapshot(
        self, breakers: Iterable[pb.Breaker], partial: bool = False, history: str = "", read: int = 0
    ) -> None:
        """The leader's snapshot on a new link: exactly these marks stand now (``partial``:
        that leader has not read etcd yet; ``history``: the etcd history its revisions rest
        on, "" when not known; ``read``: the revision its view was read through, 0: not said)."""
        breakers = list(breakers)
        listed = [b.name for b in breakers]
        self._marks = {b.name: True for b in breakers if b.no_grants}
        self._closed = {b.name: b.generation for b in breakers if b.state == pb.BREAKER_STATE_CLOSED}
        self._up = True
        for listener in self.listeners:  # (first: a state it passes on is what a mark is pushed on)
            listener.snapshot(breakers, partial, history, read)
        for name in listed:  # what this replica pushed while no link was up may differ
            self._changed(name)

    def pushed(self, breaker: pb.Breaker) -> None:
        """One breaker pushed by the leader on the link up now."""
        if not self._up:
            return  # before the link's snapshot: that snapshot restates it
        name = breaker.name
        was = (self._marks.pop(name, False), self._closed.pop(name, None))
        if breaker.no_grants:
            self._marks[name] = True
        if breaker.state == pb.BREAKER_STATE_CLOSED:
            self._closed[name] = breaker.generation
        for listener in self.listeners:
            listener.pushed(breaker)
        if was != (breaker.no_grants, self._closed.get(name)):
            self._changed(name)

    def granted(self, service: str) -> None:
        """The leader granted a permit of ``service``: it can grant (its push taking the
        mark back came first on the link; this holds even were it lost)."""
        if self._marks.pop(service, False):
            self._changed(service)

    def link_down(self) -> None:
        """The link ended: nothing is known until the next one's snapshot."""
        self._up = False
        self._marks.clear()
        self._closed.clear()
        for listener in self.listeners:
            listener.link_down()

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)
