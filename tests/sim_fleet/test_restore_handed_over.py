"""A follower that finds the store's data lost hands the restore over to a leader that
linked its relay while following.

Wild-clock schedule 146: cp2, cut off from etcd, kept its relay linked to cp0 after cp0 had
stopped leading. etcd was wiped; cp0, following, found the loss and sent its links a snapshot
saying no history (it had read none yet), then read the new one without a word (only a
leader says a new history on its links). cp0 led again, and cp2, back, found the loss too:
it hands its restore to a leader only once that leader's link says the history minted since
the loss, which cp0's never said — so cp2 held "restore pending" for good (I2), and kept
what the store lacked. A replica now says a new history on its links when it learns it,
leading or not, and one that takes over says its state again on the links of the followers
relaying to it.
"""

from __future__ import annotations

import asyncio

from . import checks, vloop
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until
from .world import Replica


def _cut(world: World, replica: Replica, cut: bool) -> None:
    (world.cut_from_etcd.add if cut else world.cut_from_etcd.discard)(replica.name)
    replica.store.cut = cut
    world.store_trouble(replica.name)


async def _relinked_leader(world: World) -> Replica:
    """Runs the schedule up to cp2's return; returns cp2."""
    for service in SERVICES:
        world.etcd.put_raw(
            f"/mission-control/v1/policies/{service}", _policy_json(policy(service, world.rng))
        )
    first = await world.start_replica("cp0")
    await _until(world, lambda: first.plane.leading, "cp0 leads")
    second = await world.start_replica("cp1")
    third = await world.start_replica("cp2")
    relay = third.plane.relay
    assert relay is not None
    await _until(world, lambda: relay.connected and second.plane.sync.loaded.is_set(), "cp2 relays to cp0")
    world.log("cp2 cut from etcd; then cp0, which cp1 takes over from")
    _cut(world, third, True)
    _cut(world, first, True)
    await _until(world, lambda: second.plane.leading, "cp1 leads")
    _cut(world, first, False)
    await _until(world, lambda: first.plane.store_ok and not first.plane.leading, "cp0 follows")
    assert relay.connected and third.plane.leadership.leader_address == "cp0"  # type: ignore[union-attr]
    world.log("cp1 cut from etcd; etcd wiped")  # cp0 finds the loss first, and leads
    _cut(world, second, True)
    world.etcd.wipe(new_cluster=False)
    world.store_trouble()
    await _until(world, lambda: first.plane.sync.wipes > 0 and bool(first.plane.history.token), "cp0 sees it")
    # (before, what cp0 said on cp2's link before it had read the history minted since stood;
    # a replica now says a new history on its links when it learns it, leading or not)
    await _until(world, lambda: first.plane.leading, "cp0 leads (the leader key went with the data)")
    _cut(world, second, False)
    await _until(world, lambda: second.plane.sync.wipes > 0, "cp1 sees it")
    await _until(world, lambda: not second.plane.writer.restore_pending, "cp1 hands its restore over")
    await asyncio.sleep(1.0)
    assert first.plane.leading and relay.connected
    _cut(world, third, False)
    await _until(world, lambda: third.plane.sync.wipes > 0, "cp2 finds the loss")
    return third


def test_a_follower_hands_its_restore_to_a_leader_it_linked_to_while_that_one_followed() -> None:
    """Before, cp2's restore stayed pending for good: "cp2.1 still has [] pending (restore
    pending: True) after etcd is back"."""

    async def main() -> World:
        world = World(0)
        follower = await _relinked_leader(world)
        writer = follower.plane.writer
        await _until(world, lambda: not writer.restore_pending, "cp2 hands the restore over", within=10.0)
        await asyncio.sleep(3.0)
        checks._leadership(world)
        checks._converged(world)
        return world

    with quiet_logs():
        world = vloop.run(main())
    assert world.result.violations == []
