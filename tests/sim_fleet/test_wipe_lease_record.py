"""Schedule 95358 at ``--active 80``, scripted: the store lost the fleet-lease epoch record
with the rest of its data, and a leader that knew nothing of the data lost took the fleet
for a new one while an agent cut off from every replica spent an earlier term's lease."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import vloop
from .fleet_checks import SHARED
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs, shared_policy

RECORD_KEY = "/mission-control/v1/fleet-lease-epoch"


async def _until(world: World, check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = world.now + within
    while not check():
        assert world.now < deadline, f"not within {within} virtual seconds: {what}"
        await asyncio.sleep(0.05)


def test_a_leader_after_a_wipe_keeps_aside_what_an_agent_cut_off_before_it_spends() -> None:
    """cp0 leads and leases agent-0 (alone, so nearly the whole limit); agent-0 is cut off
    from every replica and spends its last lease each period. The store is wiped while cp1
    cannot see it, and cp0 crashes; cp1 reaches the store, leads, notices the loss and
    restores what it holds, then crashes too before it leased. cp1 starts again holding
    nothing: it finds no record unless the restore wrote it back, takes the fleet for a
    new one and leases a new agent the whole limit beside agent-0's spending.

    Fixed: a restore writes back the record too (``LeaseEpochs.restorable``), so the new
    leader warms up until agent-0's horizon."""

    async def main() -> None:
        world = World(0)
        world.lease_secs = 0.5
        for service in SERVICES:
            world.etcd.put_raw(
                f"/mission-control/v1/policies/{service}", _policy_json(policy(service, world.rng))
            )
        world.etcd.put_raw(f"/mission-control/v1/policies/{SHARED}", _policy_json(shared_policy(0.5)))
        first = await world.start_replica("cp0")
        await _until(world, lambda: first.plane.leading, "cp0 leads")
        second = await world.start_replica("cp1")
        await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
        spender = world.new_agent()
        spender.spend_rate = 25.0
        await _until(world, lambda: world.admissions.by_agent[spender.name] > 40, "agent-0 spends")
        await _until(world, lambda: second.plane.lease_epochs.record is not None, "cp1 holds the record")
        # agent-0 reaches no replica: it spends its last lease until its horizon
        world.partitions |= {frozenset((spender.name, name)) for name in ("cp0", "cp1")}
        spender.break_link()
        before = world.admissions.by_agent[spender.name]
        second.store.cut = True
        world.etcd.wipe()
        world.crash(first)
        second.store.cut = False
        await _until(
            world,
            lambda: (
                second.plane.leading
                and second.plane.sync.wipes > 0
                and not second.plane.writer.restore_pending
            ),
            "cp1 leads, notices the loss and restores what it holds",
        )
        world.crash(second)
        fresh = await world.start_replica("cp1")
        await _until(world, lambda: fresh.plane.leading, "cp1, holding nothing, leads")
        newcomer = world.new_agent()
        newcomer.spend_rate = 25.0
        await asyncio.sleep(8.0)
        world.admissions.check()
        found = [v for v in world.result.violations if v.startswith("I4")]
        assert not found, "\n".join([*found, *world.admissions.timeline()[:60]])
        # the case at stake: agent-0 spent its last lease all along (7 a period)
        assert world.admissions.by_agent[spender.name] - before > 50

    with quiet_logs():
        vloop.run(main())
