"""An agent's snapshot built a slice of breakers at a time, letting the event loop turn.

Built in one go, a snapshot of 15,000 breakers held the loop 0.6-1.1 s on a busy machine
(1.7 s for the one every agent gets after a load), and the leader lease's keep-alive, the
leases and the pushes waited behind it. :class:`SnapshotBuild` takes ``slice_size`` breakers
per step; between steps the loop runs everything else, breaker changes included.

The agent still gets ONE snapshot that replaces what it held (DESIGN.md): the policies, the
version, the history and the read revision are taken when the build starts, each breaker
when its slice is built. What changes meanwhile reaches the agent in a push after the
snapshot, never lost: every change of what agents are told is pushed to every stream (the
engine's change listeners, the leader's states told on a follower) and

* a new stream is in the hub before its snapshot is begun, and its pushes are queued behind
  the snapshot, which it sends first (``ControlPlaneServicer.Connect``);
* a snapshot for every stream (:class:`PendingSnapshot`) takes its place in every stream's
  queue when it is begun: what is pushed during the build is queued behind it, and a stream
  reaching it waits for the build to end.

A snapshot whose etcd history changed during its build is built again (its breakers may
rest on the new history's revisions, its token says the old one).

A breaker made during the build is not in it (it is CLOSED, as one not listed is, unless a
push says otherwise); one forgotten during it (CLOSED, idle) is left out. While a stream
waits for its snapshot, its queue takes up to one message per breaker more than its bound
(:meth:`.mailbox.Mailbox.widen`): a burst of transitions during the build does not end it
as a reader that fell behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .engine import FleetBreakers
from .leader_states import LeaderStates

_log = logging.getLogger("mission_control.server")

#: Breakers a step builds before the loop turns: ~20 µs each on an idle machine, so 5 ms
#: a step there and some 10-15 ms on a busy one.
SNAPSHOT_SLICE = 250


class SnapshotBuild:
    """One snapshot: ``head`` (policies, version, ...) taken by the caller, the breakers
    added by :meth:`step` (the agent's own ``services`` and those not CLOSED first, then in
    name order, under ``max_bytes``).

    Args:
        breakers: the engine.
        leader_states: the leader's states told on a follower (None: a single replica).
        sent: told the breakers of the snapshot that carry this replica's own state.
        to_all: the snapshot goes to every agent (see ``LeaderStates.in_force``).
    """

    def __init__(
        self,
        head: pb.Snapshot,
        breakers: FleetBreakers,
        leader_states: LeaderStates | None,
        sent: Callable[[Iterable[pb.Breaker]], None],
        services: Iterable[str] = (),
        max_bytes: int = 0,
        *,
        to_all: bool = False,
    ) -> None:
        self.snapshot = head
        self._breakers = breakers
        self._leader_states = leader_states
        self._sent = sent
        self._mine = set(services)
        self._max_bytes = max_bytes
        self._to_all = to_all
        self._names = breakers.names()
        self._at = 0
        self._built: list[pb.Breaker] = []
        self._passed: set[str] = set()
        self._ranked: list[pb.Breaker] | None = None
        self._size = 0
        self.done = False

    def step(self, count: int) -> bool:
        """Build up to ``count`` more breakers; returns whether the snapshot is complete."""
        if self._ranked is None:
            self._messages(count)
        else:
            self._add(count)
        return self.done

    def finish(self) -> pb.Snapshot:
        """The rest at once."""
        while not self.step(len(self._names) + len(self._built) + 1):
            pass
        return self.snapshot

    async def run(self, count: int) -> pb.Snapshot:
        """The rest, ``count`` breakers per turn of the event loop."""
        while not self.step(count):
            await asyncio.sleep(0)
        return self.snapshot

    def _messages(self, count: int) -> None:
        end = min(self._at + count, len(self._names))
        breakers = self._breakers
        own = [breakers.to_proto(n) for n in self._names[self._at : end] if breakers.find(n) is not None]
        self._at = end
        if self._leader_states is not None:
            own, passed = self._leader_states.over_some(own, to_all=self._to_all)
            self._passed |= passed
        self._built += own
        if end < len(self._names):
            return
        if self._leader_states is not None:
            beyond = self._leader_states.beyond({m.name for m in self._built})
            self._passed |= {m.name for m in beyond}
            self._built += beyond
        mine = self._mine
        closed = pb.BREAKER_STATE_CLOSED
        self._ranked = sorted(self._built, key=lambda b: (b.name not in mine, b.state == closed, b.name))
        self._built = []
        self._at = 0
        self._size = self.snapshot.ByteSize()
        if not self._ranked:
            self.done = True

    def _add(self, count: int) -> None:
        assert self._ranked is not None
        end = min(self._at + count, len(self._ranked))
        kept = []
        for breaker in self._ranked[self._at : end]:
            self._size += breaker.ByteSize() + 8  # field tag and length
            if self._size > self._max_bytes:
                self.snapshot.omitted_breakers += 1
            else:
                kept.append(breaker)
        self._at = end
        self.snapshot.breakers.extend(kept)
        self._sent(b for b in kept if b.name not in self._passed)
        if end < len(self._ranked):
            return
        self.done = True
        if self.snapshot.omitted_breakers:
            _log.warning("snapshot left out %d breakers (size bound)", self.snapshot.omitted_breakers)


class PendingSnapshot:
    """A snapshot for every stream, queued in each before it is built: a stream that comes
    to it waits for :meth:`message` (None: the build failed; the stream is ended, and the
    agent's next one gets a snapshot of its own)."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._message: pb.ConnectResponse | None = None

    async def fill(self, built: Awaitable[pb.Snapshot]) -> None:
        try:
            self._message = pb.ConnectResponse(snapshot=await built)
        except Exception:
            _log.exception("a snapshot for every agent failed; their streams end")
        finally:
            self._ready.set()

    def abandon(self) -> None:
        """Not to be built (the control plane stops): its streams end."""
        self._ready.set()

    async def message(self) -> pb.ConnectResponse | None:
        await self._ready.wait()
        return self._message
