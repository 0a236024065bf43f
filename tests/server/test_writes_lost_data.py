"""A write answered after the store was found to have lost its data, and sent before, may
have gone to the data lost: its revision is not taken as what the store holds (real etcd).

Simulated schedule 267 at version 2 (``--active 40``): etcd was slow (2.5 s) and then
wiped; a breaker write and an operator's reset sent before the wipe were answered after
it was noticed, at revisions 41 and 40 of the old data. The replica took them as stored:
its breaker's revision stood above everything the new data held, so it ignored every
later change of that key (a leader's OPEN and HALF_OPEN) and never converged (I1, I2).
"""

from __future__ import annotations

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
