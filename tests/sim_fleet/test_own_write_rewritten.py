"""A replica notices a wipe that put another value at the revision of its own write.

Wild-clock schedule 358: cp1 found the first wipe (its history token dropped, what it had
seen forgotten) and, leading, stored an operator's state before any read of the store
came back; then it was cut off from etcd. etcd was wiped again and rebuilt by the others
past that revision, another value of the breaker at the very revision of cp1's write.
Back, cp1 held no token to compare and had never seen its own write come back, so nothing
said the store lost its data: it kept the state the store had lost (I2). What a write of
its own stored is now noted as seen there.
"""

from __future__ import annotations

from mission_control.client.breaker import BreakerState

from . import checks, vloop
from .schedule import SERVICES, World, quiet_logs
from .test_scenarios import _fleet, _until

KEY = "/mission-control/v1/breakers/svc-a"


def test_a_replica_holding_no_history_notices_a_wipe_that_rewrote_the_revision_of_its_own_write() -> None:
    async def main() -> None:
        world = World(0)
        leader, follower = await _fleet(world)
        world.crash(follower)
        # as after a loss it found itself: no history held until a read brings one
        leader.plane.history.lost_data()
        await leader.plane.set_breaker_state("svc-a", BreakerState.FORCED_OPEN, "operator")
        leader.store.cut = True  # before the watch brought the write back
        at = leader.plane.breakers.revisions["svc-a"]
        assert leader.plane.sync.delivered < at and not leader.plane.history.token
        policies = [f"/mission-control/v1/policies/{service}" for service in SERVICES]
        kept = [(key, world.etcd.read(key, 0).value) for key in policies]  # type: ignore[union-attr]
        world.etcd.wipe(new_cluster=False)  # etcd restarted empty with its old configuration
        for key, value in kept:  # written back as they were, in the same order
            world.etcd.put_raw(key, value)  # type: ignore[arg-type]
        while world.etcd.revision < at - 1:
            world.etcd.put_raw("/elsewhere/padding", b"x")
        closed = b'{"name": "svc-a", "state": "BREAKER_STATE_FORCED_CLOSED", "generation": 7}'
        world.etcd.put_raw(KEY, closed)
        assert world.etcd.read(KEY, 0).mod_revision == at  # type: ignore[union-attr]
        while world.etcd.revision <= leader.plane.sync.revision:
            world.etcd.put_raw("/elsewhere/padding", b"x")
        leader.store.cut = False
        held = lambda: leader.plane.breakers.find("svc-a")  # noqa: E731
        await _until(world, lambda: leader.plane.sync.wipes > 0, "the replica notices the wipe")
        await _until(
            world, lambda: held() is not None and held().state is BreakerState.FORCED_CLOSED, "converged"
        )
        checks._converged(world)
        assert world.result.violations == []

    with quiet_logs():
        vloop.run(main())
