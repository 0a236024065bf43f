"""After a long etcd outage the store reaches etcd again soon after it is back: gRPC's own
reconnect backoff grows to minutes, and after a 40 s outage a control plane's calls kept
failing ("Failed to connect to remote host") for up to ~27 s after etcd returned, so it
stored no fleet-lease record and its agents got no lease (server/etcd_names.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.store import EtcdStore, StoreUnavailable

#: Long enough for gRPC's default backoff to reach intervals of ~10-17 s (attempts near
#: 1, 2.6, 5.2, 9.3, 15.8, 26.3, 43 s after the outage began).
OUTAGE = 30.0
#: Back within this after etcd answers again: the backoff is at most 1 s now.
BACK_WITHIN = 5.0


async def reachable(store: EtcdStore) -> bool:
    try:
        await store.get("/reconnect/probe")
    except StoreUnavailable:
        return False
    return True


@pytest.mark.timeout(150)
async def test_the_store_is_back_soon_after_a_long_etcd_outage(etcd: EtcdProcess) -> None:
    store = await EtcdStore([etcd.endpoint]).connect()
    try:
        assert await reachable(store)
        etcd.stop()
        down = time.monotonic()
        while time.monotonic() - down < OUTAGE:  # calls go on failing, as a control plane's do
            assert not await reachable(store)
            await asyncio.sleep(0.5)
        await asyncio.to_thread(etcd.start)
        back = time.monotonic()
        while not await reachable(store):
            waited = time.monotonic() - back
            assert waited < BACK_WITHIN, f"etcd answers, the store still fails after {waited:.1f} s"
            await asyncio.sleep(0.1)
    finally:
        await store.close()
