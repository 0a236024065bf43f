"""The invariants, checked while a schedule runs (I1) and once it has healed (I1, I2, I5).

I1  No agent rejects calls for a breaker the authoritative state (etcd, while it and the
    agent's replica are healthy) has had CLOSED for longer than one push (``PUSH_SECS``)
    after the agent is connected; while etcd is away, the one leader's (from memory) for an
    agent that hears it — connected to it, or to a follower whose link to it is up — for a
    push (``outage_checks``); and while an agent's link is down, a fleet OPEN it held
    stays in force with the same expiry. Once healed, every agent holds what its replica
    tells its agents (its own state, or on a follower the leader's when newer), or goes by
    its own breaker on a state its replica pushes marked ``no_grants``.
I2  Once etcd is back, every transition decided is stored or superseded (nothing pending),
    one replica leads, and every replica holds what etcd holds.
I5  Each reported failure is counted once: no agent or relay delivers more failures than it
    had (a batch resent after its acknowledgement was lost counts twice), and an agent that
    lives to the end has delivered all of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING

from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .epoch_faults import leases_taken
from .names import singles
from .outage_checks import OutageI1
from .world import PREFIX

if TYPE_CHECKING:
    from .schedule import World

#: One push: etcd watch, a replica's broadcast, the stream — with every retry of the
#: writer (0.5 s) and of a fence that settles leadership.
PUSH_SECS = 2.0
SAMPLE_SECS = 0.2
#: How an I5 violation of one kind starts: something counted or passed on twice (an outcome
#: batch taken by a control plane whose acknowledgement was lost is sent again).
RESENT = "I5: twice:"
_REJECTING = (BreakerState.OPEN, BreakerState.FORCED_OPEN, BreakerState.HALF_OPEN)


def stored_state(world: World, name: str) -> tuple[BreakerState, int] | None:
    """(state, generation) etcd holds for breaker ``name``; CLOSED when absent; None when
    what it holds is not a breaker record."""
    entry = world.etcd.keys.get(f"{PREFIX}/breakers/{name}")
    if entry is None:
        return BreakerState.CLOSED, -1
    try:
        record = json_format.Parse(entry.value, pb.Breaker(), ignore_unknown_fields=True)
        return BreakerState(record.state), record.generation
    except Exception:
        return None


class Recorder:
    """Samples I1 every ``SAMPLE_SECS`` while the schedule runs."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.garbage: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._seen: set[tuple[str, str, str]] = set()
        self.outage = OutageI1(world, PUSH_SECS)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECS)
            self.sample()

    def violation(self, kind: str, key: tuple[str, str], text: str) -> None:
        if (kind, *key) in self._seen:
            return  # once per agent and breaker: the first time says it
        self._seen.add((kind, *key))
        self.world.result.violations.append(f"t={self.world.now:.2f} {kind}: {text}")

    def sample(self) -> None:
        world = self.world
        now = world.now
        for agent in world.agents:
            if not agent.alive:
                continue
            if agent.view.connected:
                self._closed_is_not_rejected(agent, now)
            else:
                self._open_stays_while_down(agent, now)
        self.outage.sample(self.violation)
        world.probes.sample(self._settled)

    def _settled(self, agent, now: float) -> bool:  # type: ignore[no-untyped-def]
        world = self.world
        replica = agent.replica
        if replica is None or not replica.alive or not replica.plane.sync.loaded.is_set():
            return False
        quiet_since = max(
            agent.connected_since, replica.started_at, world.store_trouble_at, world.trouble_at[replica.name]
        )
        etcd = world.etcd
        if etcd.unavailable or etcd.paused or etcd.slow or replica.store.cut or now - quiet_since < PUSH_SECS:
            return False
        return not any(r.plane.writer.restore_pending for r in world.alive_replicas())

    def _closed_is_not_rejected(self, agent, now: float) -> None:  # type: ignore[no-untyped-def]
        if not self._settled(agent, now):
            return
        world = self.world
        for name, state in list(agent.view.services.items()):
            fleet = agent.view.fleet_in_force(state, now)
            if fleet is None or fleet.state not in _REJECTING:
                continue
            stored = stored_state(world, name)
            if stored is None or stored[0] is not BreakerState.CLOSED:
                continue
            if now - world.etcd.changed_at(f"{PREFIX}/breakers/{name}") < PUSH_SECS:
                continue
            if any(r.plane.writer.is_pending(name) for r in world.alive_replicas()):
                continue
            if now - world.lapsed_at.get(name, -1e9) < PUSH_SECS:
                # a replica held a transition of it not stored yet (the state in force,
                # pushed to agents) until it crashed: etcd's CLOSED is in force from then on
                continue
            held = agent.replica.plane.breakers.find(name)
            self.violation(
                "I1",
                (agent.name, name),
                f"{agent.name} rejects {name} ({fleet.state.name}) through {agent.replica.instance} "
                f"(which holds {held.state.name if held else 'nothing'}); etcd has it CLOSED",
            )

    def _open_stays_while_down(self, agent, now: float) -> None:  # type: ignore[no-untyped-def]
        for name, (state, until) in agent.held_at_drop.items():
            if now >= until - 1e-6:
                continue
            fleet = agent.view.fleet_in_force(agent.view.get(name), now)
            if fleet is None or fleet.state is not state or abs(fleet.open_until - until) > 1e-6:
                self.violation(
                    "I1",
                    (agent.name, name + "/down"),
                    f"{agent.name} dropped the fleet OPEN of {name} while its link is down "
                    f"({until - now:.2f}s were left; in force: {fleet})",
                )


def final(world: World) -> None:
    """After healing and settling: I2, the converged part of I1, and I5."""
    _leadership(world)
    _converged(world)
    _agents_agree(world)
    _counted_once(world)
    world.admissions.check()
    leases_taken(world)
    world.result.stats.update(world.probes.stats)


def _leadership(world: World) -> None:
    leaders = [r.instance for r in world.alive_replicas() if r.plane.leading]
    if len(leaders) != 1:
        world.result.violations.append(f"I2: {len(leaders)} replicas lead after healing: {leaders}")
    for replica in world.alive_replicas():
        writer = replica.plane.writer
        if writer.pending or writer.restore_pending:
            world.result.violations.append(
                f"I2: {replica.instance} still has {sorted(writer.pending)} pending "
                f"(restore pending: {writer.restore_pending}) after etcd is back"
            )


def _converged(world: World) -> None:
    prefix = f"{PREFIX}/breakers/"
    stored_names = {k.removeprefix(prefix) for k in world.etcd.keys if k.startswith(prefix)}
    for replica in world.alive_replicas():
        breakers = replica.plane.breakers
        for name in sorted(stored_names | set(breakers.names())):
            stored = stored_state(world, name)
            if stored is None:
                continue  # garbage in etcd that nothing decided over: refused, shown
            held = breakers.find(name)
            state = held.state if held is not None else BreakerState.CLOSED
            if state is not stored[0] or (
                held is not None and stored[1] >= 0 and held.generation != stored[1]
            ):
                world.result.violations.append(
                    f"I2: {replica.instance} holds {name} {state.name}"
                    f"{f' gen {held.generation}' if held else ''}; "
                    f"etcd holds {stored[0].name} gen {stored[1]}"
                )


def _agents_agree(world: World) -> None:
    now = world.now
    for agent in world.agents:
        if not agent.alive:
            continue
        if not agent.view.connected or agent.replica is None:
            world.result.violations.append(f"I1: {agent.name} is not connected after healing")
            continue
        for name, state in list(agent.view.services.items()):
            fleet = agent.view.fleet_in_force(state, now)
            told = _told(agent.replica, name)
            want = BreakerState(told.state)
            got = fleet.state if fleet is not None else BreakerState.CLOSED
            if got is not want and not _held_as_marked(world, told, name, state, fleet):
                world.result.violations.append(
                    f"I1: {agent.name} holds {name} {got.name}; "
                    f"its replica {agent.replica.instance} tells {want.name}"
                )


def _told(replica, name: str) -> pb.Breaker:  # type: ignore[no-untyped-def]
    """What ``replica`` tells its agents of breaker ``name``: its own state, or on a
    follower the leader's when newer (``server/leader_states.py``)."""
    plane = replica.plane
    if plane.breakers.find(name) is not None:
        own = plane.breakers.to_proto(name)
    else:
        own = pb.Breaker(name=name, state=pb.BREAKER_STATE_CLOSED)
    return plane._in_force(own)  # type: ignore[no-any-return]


def _held_as_marked(world: World, told: pb.Breaker, name: str, state, fleet) -> bool:  # type: ignore[no-untyped-def]
    """Whether the agent goes by its own breaker on the state its replica tells (``told``)
    because that state is pushed marked ``no_grants``, for the wait after a takeover that
    followed etcd's return only (a mark pushed during the outage stays through it; see
    server/grant_pause.py): the leader's lease and its stored run are known to hold, and
    the mark goes once the wait is over. What is told, not the replica's own breaker: a
    follower tells the leader's state, mark included, when it is newer than its own (one
    restarted over a record it cannot read holds the breaker CLOSED)."""
    known = state.fleet
    leaders = [r.plane.breakers for r in world.alive_replicas() if r.plane.leading]
    waiting = len(leaders) == 1 and not leaders[0].grants_unsure(name) and leaders[0].grants_blocked(name)
    return bool(
        told.no_grants
        and waiting
        and fleet is None
        and known is not None
        and known.state is BreakerState(told.state)
        and known.no_grants_since is not None
    )


def _counted_once(world: World) -> None:
    """I5 as ``server/outcome_ledger.py`` states it: no engine counts one batch twice (nor
    one already in a count it took from a stored record: ``trip_counts.py``, as it runs); each
    batch an agent delivered is counted, in full, by an engine (unless the report gate cut
    some of it, or the only relay that took it crashed); every sender passes on what it had."""
    violations = world.result.violations
    for agent in world.agents:
        generated = sum(agent.generated.values())
        delivered = sum(world.delivered_keys[agent.name].values())
        if delivered > generated:
            violations.append(f"{RESENT} {agent.name} delivered {delivered} failures, had {generated}")
        elif agent.alive and delivered != generated:
            violations.append(f"I5: {agent.name} had {generated} failures, delivered {delivered}")
    lost = _relays_pass_on(world)
    # what each engine counted of each batch (a range a relay merged: of each batch in it)
    credited: Counter[tuple[str, object]] = Counter()
    for (instance, name), failures in sorted(world.counted_by.items(), key=str):
        if name is None:
            continue
        parts = singles(name)
        had = sum(world.batches.get(part, 0) for part in parts)
        if failures > had and len(parts) > 1:
            violations.append(
                f"{RESENT} {instance} counted {failures} failures of batches {name}, which had {had}"
            )
        left = failures
        for part in parts:
            got = failures if len(parts) == 1 else min(world.batches.get(part, 0), left)
            left -= got
            credited[(instance, part)] += got
    counted: dict[object, int] = {}
    for (instance, part), failures in sorted(credited.items(), key=str):
        had = world.batches.get(part, 0)  # type: ignore[call-overload]
        if failures > had:
            violations.append(
                f"{RESENT} {instance} counted {failures} failures of batch {part}, which had {had}"
            )
        counted[part] = max(counted.get(part, 0), failures)
    cut = {part for name in world.cut_keys if name is not None for part in singles(name)}
    for agent in world.agents:
        for name, failures in world.delivered_keys[agent.name].items():
            got = counted.get(name, 0)
            excused = name in cut or (name in lost and not agent.alive)
            if failures and got != failures and not excused:
                violations.append(f"I5: batch {name} had {failures} failures; the engines counted {got}")
    stats = world.result.stats
    stats["failures"] += sum(world.counted.values())
    stats["cut_by_report_gate"] += sum(world.cut.values())
    stats["lost_in_crashed_relays"] += sum(world.batches.get(name, 0) for name in lost)
    stats["resent_batches"] += sum(1 for n in world.deliveries.values() if n > 1)
    with contextlib.suppress(Exception):
        stats["superseded"] += sum(r.plane.writer.superseded for r in world.alive_replicas())


def _relays_pass_on(world: World) -> set[object]:
    """Check that each relay passed on what it took, each batch once; return the batches
    a crashed relay held (lost with it, also when it took them from another relay)."""
    violations = world.result.violations
    relays = (
        set(world.taken_keys) | set(world.taken_loose) | set(world.drained_keys) | set(world.drained_loose)
    )
    relays |= {sender for sender in world.delivered_keys if sender.startswith("relay:")}
    alive = {f"relay:{r.instance}" for r in world.alive_replicas()}
    held: set[object] = set()
    for relay in sorted(relays):
        upstream = {**world.delivered_keys[relay], **world.drained_keys[relay]}
        # each batch once, however often and under whichever name (alone, or in a range it
        # merged) it went: a replica that led for a while drains what it held, then passes
        # on the same batches again when their agent sends them again
        passed = sum(_by_batch(world, upstream).values()) + world.drained_loose[relay]
        taken = sum(_by_batch(world, world.taken_keys[relay]).values()) + world.taken_loose[relay]
        if passed > taken:
            violations.append(f"{RESENT} {relay} passed on {passed} failures, was given {taken}")
        elif relay in alive and passed != taken:
            violations.append(f"I5: {relay} was given {taken} failures, passed on {passed}")
        if relay not in alive:
            given = {part for name in world.taken_keys[relay] for part in singles(name)}
            held |= given - {part for name in upstream for part in singles(name)}
    return held


def _by_batch(world: World, names: dict[object, int]) -> dict[object, int]:
    """Failures by batch of what ``names`` carried (a range's shared out over its batches)."""
    out: dict[object, int] = {}
    for name, failures in sorted(names.items(), key=lambda item: len(singles(item[0]))):  # type: ignore[arg-type]
        parts = singles(name)  # type: ignore[arg-type]
        if len(parts) == 1:
            out.setdefault(parts[0], failures)
            continue
        left = failures
        for part in parts:
            got = min(world.batches.get(part, 0), left)
            left -= got
            out.setdefault(part, got)
    return out
