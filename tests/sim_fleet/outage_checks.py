"""I1 while etcd is away, sampled with the rest of I1 (``checks.Recorder``).

While etcd is away (unavailable or paused) no replica can campaign: the one leader keeps
deciding from memory, and what it holds is the state in force. It pushes each decision to its
own agents, and on each follower's link to it; the follower passes on to its agents what the
leader pushed when it is newer than its own (``server/leader_states.py``). So an agent
connected for a push to the leader, or to a follower whose link to the leader has been up
for a push, rejects no call, once etcd has been away for a push (a paused one: for the
store's request timeout and a push, as no replica can tell it is away sooner), for a breaker the leader
has held CLOSED for longer than a push.
Nothing is asked of an agent behind a follower with no link up (it holds what it was told:
fail static), nor while two replicas believe they lead, nor of a leader that has not read
etcd yet (its snapshots are partial: agents keep what they held).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState

from .memstore import TIMEOUT

if TYPE_CHECKING:
    from .schedule import World
    from .world import Replica

_REJECTING = (BreakerState.OPEN, BreakerState.FORCED_OPEN, BreakerState.HALF_OPEN)


class OutageI1:
    """Samples I1 for the agents that hear the leader while etcd is away."""

    def __init__(self, world: World, push_secs: float) -> None:
        self.world = world
        self.push_secs = push_secs
        #: replica instance -> (the leader its link reaches, since when it has been seen up)
        self._linked: dict[str, tuple[str, float]] = {}

    def sample(self, violation) -> None:  # type: ignore[no-untyped-def]
        world = self.world
        now = world.now
        leaders = [r for r in world.alive_replicas() if r.plane.leading]
        self._note_links(leaders[0] if len(leaders) == 1 else None, now)
        etcd = world.etcd
        if not (etcd.unavailable or etcd.paused) or len(leaders) != 1:
            return
        # the replicas notice etcd is away by a health check, then push: a refusing etcd at
        # once, a paused one only when a request to it times out (seed 3 at 80 s: a check
        # 2.0 s into a pause, before either replica's ping had timed out)
        noticed = TIMEOUT if etcd.paused else 0.0
        if now - world.store_trouble_at < noticed + self.push_secs:
            return
        leader = leaders[0]
        if not leader.plane.view_complete:
            return  # what it holds is not the store's yet: it says nothing as the truth
        for agent in world.agents:
            replica = agent.replica
            if not agent.alive or not agent.view.connected or replica is None or not replica.alive:
                continue
            if now - agent.connected_since < self.push_secs or not self._hears(replica, leader, now):
                continue
            for name, state in list(agent.view.services.items()):
                fleet = agent.view.fleet_in_force(state, now)
                if fleet is None or fleet.state not in _REJECTING:
                    continue
                held = leader.plane.breakers.find(name)
                if held is None or held.state is not BreakerState.CLOSED:
                    continue
                if now - held.changed_at < self.push_secs:
                    continue
                own = replica.plane.breakers.find(name)
                if _read_later(replica, leader, name):
                    continue
                violation(
                    "I1",
                    (agent.name, name + "/away"),
                    f"{agent.name} rejects {name} ({fleet.state.name}, gen {fleet.generation}) through "
                    f"{replica.instance} (which holds {own.state.name if own else 'nothing'}"
                    f"{f' gen {own.generation}' if own else ''}) while etcd is away; the leader "
                    f"{leader.instance} has held it CLOSED (gen {held.generation}) for "
                    f"{now - held.changed_at:.2f}s",
                )

    def _hears(self, replica: Replica, leader: Replica, now: float) -> bool:
        """Whether ``replica`` has heard ``leader`` for a push: it is the leader, or its
        link to it has been up that long (and its view was loaded)."""
        if replica is leader:
            return True
        if not replica.plane.sync.loaded.is_set():
            return False
        linked = self._linked.get(replica.instance)
        return linked is not None and linked[0] == leader.name and now - linked[1] >= self.push_secs

    def _note_links(self, leader: Replica | None, now: float) -> None:
        for replica in self.world.alive_replicas():
            relay = replica.plane.relay
            up = (
                leader is not None
                and replica is not leader
                and relay is not None
                and relay.connected
                and relay._leader_address == leader.name
            )
            if not up or leader is None:
                self._linked.pop(replica.instance, None)
            elif self._linked.get(replica.instance, ("", 0.0))[0] != leader.name:
                self._linked[replica.instance] = (leader.name, now)


def _read_later(replica, leader, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``replica`` holds a stored state of ``name`` the leader has not read: a write
    (an operator's, through it) at a later revision of the same etcd history than any the
    leader read through — told to its agents over the leader's older state by design
    (``server/leader_states.py``)."""
    if replica is leader:
        return False
    token = replica.plane.history.token
    if not token or token != leader.plane.history.token:
        return False
    own = replica.plane.breakers.revisions.get(name, 0)
    read = max(leader.plane.breakers.revisions.get(name, 0), leader.plane.sync.delivered)
    return own > read
