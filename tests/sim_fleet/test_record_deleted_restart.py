"""The fleet-lease epoch record deleted (by hand, or lost) while every replica restarts,
scripted (the case schedule 50012 at ``--active 40`` showed on an earlier build): the store
kept its history (the history token is there), only the record is gone, so a new leader
finds nothing that says the fleet was leased. An agent that held a lease and is cut off
from every replica spends it until its horizon; a new leader that takes the fleet for a new
one splits the whole limit beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mission_control.server.store import Write

from . import vloop
from .fleet_checks import SHARED
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs, shared_policy

PREFIX = "/mission-control/v1"
RECORD_KEY = f"{PREFIX}/fleet-lease-epoch"
HISTORY_KEY = f"{PREFIX}/store-history"


async def _until(world: World, check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = world.now + within
    while not check():
        assert world.now < deadline, f"not within {within} virtual seconds: {what}"
        await asyncio.sleep(0.05)


def test_a_leader_restarted_without_the_record_keeps_aside_what_an_agent_cut_off_spends() -> None:
    """cp0 leads and leases agent-0 (alone: nearly the whole limit); agent-0 is cut off from
    both replicas and spends its last lease every period. The record is deleted and both
    replicas crash and start again, holding nothing: the one that leads finds the history
    token but no record. A new agent connects and asks for the whole limit; the window bound
    must hold while agent-0 spends to its horizon, and the new agent must be leased again
    once that horizon has passed (a warm-up, not a stall).

    Fixed: a leader marks the history token before it first records
    (``StoreHistory.mark_leased``), and one that finds the mark but no record warms up as
    after an unknown past. Before, agent-1 was leased the whole limit at once: 55 admitted
    in a 2 s window against 37.5."""

    async def main() -> None:
        world = World(0)
        world.lease_secs = 0.5
        for service in SERVICES:
            world.etcd.put_raw(f"{PREFIX}/policies/{service}", _policy_json(policy(service, world.rng)))
        world.etcd.put_raw(f"{PREFIX}/policies/{SHARED}", _policy_json(shared_policy(0.5)))
        first = await world.start_replica("cp0")
        await _until(world, lambda: first.plane.leading, "cp0 leads")
        second = await world.start_replica("cp1")
        await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
        spender = world.new_agent()
        spender.spend_rate = 25.0
        await _until(world, lambda: world.admissions.by_agent[spender.name] > 40, "agent-0 spends")
        await _until(world, lambda: RECORD_KEY in world.etcd.keys, "the record is stored")
        assert HISTORY_KEY in world.etcd.keys
        # agent-0 reaches no replica: it spends its last lease until its horizon
        world.partitions |= {frozenset((spender.name, name)) for name in ("cp0", "cp1")}
        spender.break_link()
        before = world.admissions.by_agent[spender.name]
        world.log("epoch record deleted; every replica restarted")
        world.etcd.txn([Write(RECORD_KEY, None)], [])
        world.store_trouble()
        world.crash(first)
        world.crash(second)
        fresh = [await world.start_replica("cp0"), await world.start_replica("cp1")]
        await _until(world, lambda: any(r.plane.leading for r in fresh), "a restarted replica leads")
        leader = next(r for r in fresh if r.plane.leading)
        # it found no record, only the history the fleet was leased in
        assert leader.plane.lease_epochs.record is None and leader.plane.history.leased
        newcomer = world.new_agent()
        newcomer.spend_rate = 25.0
        await asyncio.sleep(8.0)
        world.admissions.check()
        found = [v for v in world.result.violations if v.startswith("I4")]
        assert not found, "\n".join([*found, *world.admissions.timeline()[:60]])
        # the case at stake: agent-0 spent its last lease all along
        assert world.admissions.by_agent[spender.name] - before > 50
        # and leasing resumes once no agent can spend an earlier lease any more
        late = world.admissions.by_agent[newcomer.name]
        await asyncio.sleep(40.0)
        assert world.admissions.by_agent[newcomer.name] - late > 100, "the new agent is leased again"
        world.admissions.check()
        found = [v for v in world.result.violations if v.startswith("I4")]
        assert not found, "\n".join(found)

    with quiet_logs():
        vloop.run(main())
