"""A write answered after the store was found to have lost its data, and sent before, may
have gone to the data lost: its revision is not taken as what the store holds (real etcd).

Simulated schedule 267 at version 2 (``--active 40``): etcd was slow (2.5 s) and then
wiped; a breaker write and an operator's reset sent before the wipe were answered after
it was noticed, at revisions 41 and 40 of the old data. The replica took them as stored:
its breaker's revision stood above everything the new data held, so it ignored every
later change of that key (a leader's OPEN and HALF_OPEN) and never converged (I1, I2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore, Write
from mission_control.server.sync import StoreSync
from mission_control.server.writes import StateWriter


@pytest.fixture
async def parts(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[tuple[EtcdStore, StoreSync]]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    policies = PolicyBook(prefix)
    breakers = FleetBreakers(policies.policy_of)
    writer = StateWriter(store, lambda name: f"{prefix}/breakers/{name}", breakers, policies)
    yield store, StoreSync(store, prefix, policies, breakers, writer, on_store=lambda ok: None)
    await store.close()


async def test_an_operator_write_answered_after_a_loss_of_data_is_written_again(
    parts: tuple[EtcdStore, StoreSync], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sync = parts
    key = f"{prefix}/breakers/svc"
    commit = store.commit
    answered = 0

    async def wiped_before_the_answer(writes, guards=(), **options):  # type: ignore[no-untyped-def]
        nonlocal answered
        result = await commit(writes, guards, **options)
        answered += 1
        if answered == 1:  # the store loses the write with its data; the loss is noticed
            await commit([Write(key, None)], ())
            sync.lost_data("test: wiped")
        return result

    monkeypatch.setattr(store, "commit", wiped_before_the_answer)
    written = await sync.writer.set_breaker_state("svc", BreakerState.FORCED_OPEN, "maintenance")
    entry = await store.get(key)
    assert entry is not None, "the write went with the data lost, and was not written again"
    assert sync.breakers.revisions["svc"] == entry.mod_revision == written.revision


async def test_a_breaker_held_at_a_revision_above_the_store_is_taken_for_lost_data(
    parts: tuple[EtcdStore, StoreSync], prefix: str
) -> None:
    """etcd wiped again with the same cluster id, before this replica saw it: the breaker
    it restored at revision r is gone, and the store's revision is below r. It is a loss
    of data (a key's revision never goes back), not a write stored after the read
    (simulated schedule 3030 at version 2: a deposed leader held an OPEN etcd no longer
    had, and its agents rejected calls to the end)."""
    store, sync = parts
    written = await sync.writer.set_breaker_state("svc", BreakerState.FORCED_OPEN, "maintenance")
    await store.commit([Write(f"{prefix}/breakers/svc", None)], ())  # wiped: gone...
    now = (await store.ping()).revision
    sync.breakers.revisions["svc"] = now + 1000  # ...and stored at a revision of the data lost
    loading = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.loaded.wait(), 30)
        assert sync.wipes == 1 and sync.writer.restore_pending, "a breaker above the store's revision"
        held = sync.breakers.find("svc")
        assert held is not None and held.state is BreakerState.FORCED_OPEN  # kept: the leader restores it
    finally:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
    assert written.revision < now
