"""A replica started while cut from etcd leads only once it has read the store (scripted;
schedule 204 of wild clocks at ``--active 20``): it knew no policy, and leading then it
decided every breaker under the defaults. There a breaker whose policy says
``success_threshold`` 1 went OPEN after 5 failures (the default), took the stored OPEN,
half-opened and let 2 probes out at once (the default threshold, 3, once one had
succeeded): I3 broken. Its sync retries the store up to 2 s apart, while a campaign is
tried every 0.2 s: the lease was won first."""

from __future__ import annotations

import asyncio

from mission_control.client.policy import ServicePolicy

from . import vloop
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until

STORED = ServicePolicy(service="svc-a", failure_threshold=3, success_threshold=1, wait_duration_secs=1.0)


def test_a_replica_started_cut_from_etcd_leads_only_once_it_has_read_the_store() -> None:
    async def main() -> list[tuple[float, bool, int]]:
        world = World(0)
        world.success_thresholds["svc-a"] = 1
        for service in SERVICES:
            chosen = STORED if service == "svc-a" else policy(service, world.rng)
            world.etcd.put_raw(f"/mission-control/v1/policies/{service}", _policy_json(chosen))
        first = await world.start_replica("cp0")
        await _until(world, lambda: first.plane.leading, "cp0 leads")
        world.crash(first)
        world.cut_from_etcd.add("cp0")
        again = await world.start_replica("cp0")  # restarted where etcd is out of reach
        await asyncio.sleep(6.0)  # its store retries are 2 s apart by now
        assert not again.plane.sync.loaded.is_set()
        world.cut_from_etcd.discard("cp0")
        again.store.cut = False
        seen: list[tuple[float, bool, int]] = []  # (when, loaded, svc-a's threshold) while leading
        deadline = world.now + 10.0
        while world.now < deadline and len(seen) < 5:
            if again.plane.leading:
                threshold = again.plane.policies.policy_of("svc-a").success_threshold
                seen.append((world.now, again.plane.sync.loaded.is_set(), threshold))
            await asyncio.sleep(0.01)
        return seen

    with quiet_logs():
        seen = vloop.run(main())
    assert seen, "the restarted replica never led"
    assert all(loaded and threshold == 1 for _, loaded, threshold in seen), seen
