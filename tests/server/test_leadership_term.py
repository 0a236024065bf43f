"""A replica that leads again after etcd lost its data starts a new term, although its new
leader key may carry the same create revision as the one before the wipe (revisions start
over). Its fleet leases then carry an epoch above the one its agents hold: the first term's
epoch, taken again, was below what another leader leased in between, and the agents ignored
every lease to the end of the schedule (simulation seed 0 at version 1). The real control
plane on the simulation's in-memory etcd and virtual clock."""

from __future__ import annotations

import asyncio
import random

from mission_control.server.control_plane import ControlPlane

from ..sim_fleet import vloop
from ..sim_fleet.memstore import MemEtcd, MemStore


async def _no_relay(address, requests, metadata):  # type: ignore[no-untyped-def]
    raise ConnectionResetError(f"{address}: a lone replica relays to nobody")
    yield  # pragma: no cover


async def _until(check, what: str, within: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within} virtual seconds: {what}"
        await asyncio.sleep(0.02)


def test_leading_again_after_a_wipe_is_a_new_term_with_a_higher_lease_epoch() -> None:
    async def main() -> None:
        etcd = MemEtcd(random.Random(1))
        store = MemStore(etcd)
        clock = asyncio.get_running_loop().time
        plane = ControlPlane(store, prefix="/p", instance_id="cp0", clock=clock, wall=lambda: 1.8e9 + clock())
        plane.enable_leadership("cp0", ttl=3, connect=_no_relay)
        await plane.start(load_timeout=5.0)
        leadership = plane.leadership
        assert leadership is not None
        await _until(lambda: leadership.leading, "leading")
        created, term, epoch = leadership.epoch, leadership.term, plane.lease_epochs.epoch()
        lease = leadership.guard().lease  # type: ignore[union-attr]  # (never reused: a new one each takeover)
        await asyncio.sleep(5.0)  # the next takeover is later on the wall clock
        etcd.wipe(new_cluster=False)
        await _until(
            lambda: leadership.leading and leadership.guard().lease != lease,  # type: ignore[union-attr]
            "leading again",
        )
        assert leadership.epoch == created  # the same create revision: the case at stake
        assert plane.lease_epochs.epoch() > epoch  # (it leased in its first term's epoch)
        assert leadership.term > term
        await plane.stop()

    vloop.run(main())
