"""Followers watch the leader key: one takes over the moment the leader's lease is gone,
and the others learn the new leader's address, with polling turned off (real etcd)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from mission_control.server import leadership as leadership_module
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.leadership import Leadership
from mission_control.server.store import EtcdStore


async def _until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_follower_takes_over_when_the_lease_is_gone_without_polling(
    etcd_server: EtcdProcess, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leadership_module, "FOLLOWER_POLL_SECS", 3600.0)  # only the watch wakes
    stores = [await EtcdStore([etcd_server.endpoint]).connect() for _ in range(3)]
    # a long TTL: the old leader's own renewal cannot notice in time either
    replicas = [
        Leadership(store, prefix, f"r{i}", f"127.0.0.1:{1000 + i}", ttl=60) for i, store in enumerate(stores)
    ]
    first, *others = replicas
    tasks = [asyncio.create_task(first.run())]
    try:
        assert await _until(lambda: first.leading)
        tasks += [asyncio.create_task(r.run()) for r in others]
        assert await _until(lambda: all(r.leader_id == "r0" for r in others))
        await asyncio.sleep(0.3)  # both followers are now asleep for the (hour-long) poll
        await stores[0].revoke_lease(first._lease)  # as etcd does when a dead leader's lease ends

        assert await _until(lambda: any(r.leading for r in others)), "nobody took over"
        winner = next(r for r in others if r.leading)
        loser = next(r for r in others if r is not winner)
        assert await _until(lambda: loser.leader_address == winner.address), loser.leader_address
        assert await _until(lambda: not first.leading)  # the old leader's own watch woke it
        assert sum(r.leading for r in replicas) == 1
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for store in stores:
            await store.close()
