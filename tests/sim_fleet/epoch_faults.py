"""A lost fleet-lease epoch record, in some schedules: a record put by hand ahead of the
clock and the leader restarted (its successor takes an epoch above it, and so do the
agents), then the record deleted — or etcd wiped — and the leader restarted again. The next
leader's own epoch (the time it took over) is then below what the agents hold, and they
ignore every lease of a lower epoch: only their report of the epoch they hold
(``CapacityDemand.held_epoch``) moves it above theirs (``server/lease_epoch.py``). I4 checks
the window bound throughout, and :func:`leases_taken` that the agents take the leader's
leases once healed.

Drawn from a generator of their own, so the schedules without them stay as they were.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from mission_control.server.lease_epoch import RECORD, EpochRecord
from mission_control.server.store import Write

from .fleet_checks import SHARED
from .world import EPOCH, PREFIX

if TYPE_CHECKING:
    from .schedule import World

#: One schedule in this many loses its record.
SHARE = 3
KEY = f"{PREFIX}/{RECORD}"


def plan(world: World) -> None:
    """Schedule the record's faults of ``world``'s seed, if it has any."""
    rng = random.Random(f"epoch-record/{world.seed}")
    if rng.randrange(SHARE):
        return
    loop = asyncio.get_running_loop()
    ahead_at = rng.uniform(0.05, 0.4) * world.active_secs
    lost_at = ahead_at + rng.uniform(0.2, 0.5) * world.active_secs
    ahead_ms = round(rng.uniform(30.0, 240.0) * 1000)  # within the skew a record may have
    wipe = rng.random() < 0.3
    loop.call_later(ahead_at, lambda: _put_ahead(world, ahead_ms, rng.uniform(0.0, 1.0)))
    loop.call_later(lost_at, lambda: _lose(world, wipe, rng.uniform(0.0, 1.0)))


def _put_ahead(world: World, ahead_ms: int, restart_in: float) -> None:
    epoch = round((EPOCH + world.now) * 1000) + ahead_ms
    world.log(f"epoch record put {ahead_ms / 1000:.0f}s ahead; the leader restarted")
    world.etcd.put_raw(KEY, EpochRecord(epoch, "operator", EPOCH + world.now).encode())
    _restart_leader(world, restart_in)


def _lose(world: World, wipe: bool, restart_in: float) -> None:
    # every replica restarted: none remembers the record (a replica that saw it takes an
    # epoch above it from memory)
    world.store_trouble()
    etcd = world.etcd
    if wipe:
        world.log("etcd wiped (the epoch record lost), its policies put back; every replica restarted")
        policies = {k: v.value for k, v in etcd.keys.items() if k.startswith(f"{PREFIX}/policies/")}
        etcd.wipe(new_cluster=False)
        for key in sorted(policies):  # the operator's config import
            etcd.put_raw(key, policies[key])
    else:
        world.log("epoch record deleted; every replica restarted")
        etcd.txn([Write(KEY, None)], [])
    for replica in world.alive_replicas():
        world.crash(replica)
        name = replica.name
        asyncio.get_running_loop().call_later(restart_in, lambda name=name: world.restart(name))


def _restart_leader(world: World, restart_in: float) -> None:
    for leader in [r for r in world.alive_replicas() if r.plane.leading]:
        world.crash(leader)
        name = leader.name
        asyncio.get_running_loop().call_later(restart_in, lambda name=name: world.restart(name))


def leases_taken(world: World) -> None:
    """After healing and settling: every connected agent holds the leader's lease epoch
    (an agent above it would ignore all its leases)."""
    leaders = [r for r in world.alive_replicas() if r.plane.leading]
    if len(leaders) != 1:
        return  # said by I2
    epoch = leaders[0].plane.lease_epochs.epoch()
    for agent in world.agents:
        state = agent.view.services.get(SHARED) if agent.alive and agent.view.connected else None
        for budget in state.leased.values() if state is not None else ():
            if budget.epoch != epoch:
                world.result.violations.append(
                    f"I4: {agent.name} holds fleet-lease epoch {budget.epoch}, "
                    f"the leader {leaders[0].instance} leases in {epoch}"
                )
