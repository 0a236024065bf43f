"""A control plane loading a big prefix lets the event loop run while it applies it: held
for the whole load (15,000 breakers took seconds of CPU, over a minute on a busy machine),
the leader lease lapsed and the start's load timeout could not fire. Real etcd; what is
counted is turns of the loop, not time. The slice a load applies between two turns is
measured on the clock (``LOAD_SLICE_SECS``), not counted in entries: here each entry is made
to take at least 2 ms, as on a busy machine, and the loop must still turn every few entries
(250 entries a turn held it for a second at load 30)."""

from __future__ import annotations

import asyncio
import time

import pytest
from mission_control.server import sync
from mission_control.server.control_plane import ControlPlane
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore, Write

COUNT = 600


async def store_breakers(store: EtcdStore, prefix: str) -> None:
    breakers = FleetBreakers(PolicyBook(prefix).policy_of)
    for start in range(0, COUNT, 100):
        writes = []
        for i in range(start, start + 100):
            breaker = breakers.draft(f"stored-{i:05d}")
            writes.append(Write(f"{prefix}/breakers/{breaker.name}", breakers.record_of(breaker)))
        assert await store.commit(writes) is not None


async def test_the_loop_turns_while_a_big_prefix_is_applied(
    etcd_server: EtcdProcess, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = sync.StoreSync.apply

    def apply(self: sync.StoreSync, key: str, value: bytes | None, revision: int) -> bool:
        time.sleep(0.002)  # holds the loop, as a starved CPU does
        return slow(self, key, value, revision)

    monkeypatch.setattr(sync.StoreSync, "apply", apply)
    store = EtcdStore([etcd_server.endpoint])
    await store.connect()
    await store_breakers(store, prefix)
    plane = ControlPlane(store, prefix=prefix)
    seen: list[int] = []  # how many breakers were held at each turn of the loop

    async def turns() -> None:
        while not plane.sync.loaded.is_set():
            seen.append(len(plane.breakers.names()))
            await asyncio.sleep(0)

    counting = asyncio.create_task(turns())
    try:
        await plane.start(load_timeout=600.0)
        await counting
        assert len(plane.breakers.names()) == COUNT
        # applied in one go, the loop would have seen none of them, then all
        partly = sorted({n for n in seen if 0 < n < COUNT})
        # at least 2 ms an entry: a slice holds at most LOAD_SLICE_SECS / 2 ms + 1 of them
        most = int(sync.LOAD_SLICE_SECS / 0.002) + 1
        assert len(partly) >= COUNT // most - 1, partly
    finally:
        counting.cancel()
        await plane.stop()
        await store.close()
