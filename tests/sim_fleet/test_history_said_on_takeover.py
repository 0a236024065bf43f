"""A replica that learned the store's new history while it followed says it on every link
once it leads (scripted; schedule 146 of wild clocks at ``--active 20``). A follower's
relay still linked to it from before it led held its snapshot from a reload after a wipe,
which said no history; the new leader said the history only when it changed while it led,
so the follower, its restore pending after the loss, waited for ever for a leader that
had seen the loss (I2: restore pending after etcd was back)."""

from __future__ import annotations

import asyncio

from mission_control.resilience.v1 import control_plane_pb2 as pb

from . import vloop
from .schedule import SERVICES, World, _policy_json, policy, quiet_logs
from .test_scenarios import _until


def test_a_history_learned_while_following_is_said_on_taking_over() -> None:
    async def main() -> tuple[str, list[str]]:
        world = World(0)
        for service in SERVICES:
            world.etcd.put_raw(
                f"/mission-control/v1/policies/{service}", _policy_json(policy(service, world.rng))
            )
        first = await world.start_replica("cp0")
        await _until(world, lambda: first.plane.leading, "cp0 leads")
        second = await world.start_replica("cp1")
        await _until(world, lambda: second.plane.sync.loaded.is_set(), "cp1 loaded")
        said: list[str] = []  # the history each snapshot cp1 sends on all its links says
        broadcast = second.plane.hub.broadcast

        def watched(message: pb.ConnectResponse) -> None:
            if message.HasField("snapshot"):
                said.append(message.snapshot.history)
            broadcast(message)

        second.plane.hub.broadcast = watched  # type: ignore[method-assign]
        # cp1 cut from etcd while it is wiped: cp0 alone leads again, restores and mints
        # the new history, which cp1 learns once back, following
        world.cut_from_etcd.add("cp1")
        second.store.cut = True
        before = second.plane.history.token
        world.etcd.wipe()
        world.store_trouble()
        key = "/mission-control/v1/leader"
        await _until(
            world,
            lambda: first.plane.history.token not in ("", before) and key in world.etcd.keys,
            "cp0 leads again, on the new history",
        )
        world.cut_from_etcd.discard("cp1")
        second.store.cut = False
        await _until(
            world, lambda: second.plane.history.token == first.plane.history.token, "cp1 knows the history"
        )
        assert first.plane.leading and not second.plane.leading
        await asyncio.sleep(1.0)
        said.clear()
        world.crash(first)
        await _until(world, lambda: second.plane.leading, "cp1 leads")
        await asyncio.sleep(0.5)
        return second.plane.history.token, said

    with quiet_logs():
        token, said = vloop.run(main())
    assert token in said, (token, said)
