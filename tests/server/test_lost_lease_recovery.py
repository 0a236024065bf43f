"""A control plane that lost its leader lease while etcd was paused leads again once etcd
answers, and stops within a bound; a loop cancelled as it is woken ends (a real etcd,
paused with SIGSTOP; a control plane in this process)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from mission_control.server.app import start_control_plane
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.loop_tasks import end_tasks
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore, Guard, StoreUnavailable
from mission_control.server.writes import StateWriter

#: Longer than the leader lease (3 s) and the store's 2 s bound.
PAUSE_SECS = 4.0
#: Bounds, not speeds: far beyond what each takes on a loaded machine.
LEAD_AGAIN_SECS = 30.0
STOP_SECS = 20.0


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds (asked every 50 ms)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@dataclass
class Follower:
    """Leadership as the writer sees it: another replica may lead, none is known yet."""

    leading: bool = False
    instance_id: str = "me"
    leader_id: str | None = None

    def guard(self) -> Guard | None:
        return None

    def fenced(self) -> None:
        return None

    async def refresh_leader(self) -> None:
        return None


@pytest.fixture
async def writer(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[StateWriter]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    policies = PolicyBook(prefix)
    writer = StateWriter(
        store,
        lambda name: f"{prefix}/breakers/{name}",
        policies=policies,
        breakers=FleetBreakers(policies.policy_of),
    )
    yield writer
    await store.close()


async def test_a_writer_cancelled_as_it_is_woken_ends(writer: StateWriter) -> None:
    writer.fence = Follower()
    writer.decided("vector_db")  # kept pending while no leader is known: the writer retries
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(20):  # turns of the loop: the writer is back in its bounded wait
            await asyncio.sleep(0)
        writer.wake()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_SECS)
        assert done, "the writer went on after its cancel"
    finally:
        assert not await end_tasks([task], STOP_SECS)


async def test_ending_tasks_cancels_again_a_task_that_ignored_its_cancel() -> None:
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    assert await end_tasks([task], STOP_SECS) == []
    assert task.cancelled() and cancels == 2


async def test_a_leader_that_lost_its_lease_while_etcd_was_paused_leads_again_and_stops(
    etcd: EtcdProcess, prefix: str
) -> None:
    running = await start_control_plane(EtcdStore([etcd.endpoint]), "127.0.0.1:0", prefix=prefix)
    leadership = running.plane.leadership
    assert leadership is not None and etcd.pid is not None
    try:
        assert await wait_until(lambda: leadership.leading, LEAD_AGAIN_SECS)
        first = leadership.epoch
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            # The lease runs out in etcd while it is paused: it revokes it when it resumes.
            await asyncio.sleep(PAUSE_SECS)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        assert await wait_until(lambda: leadership.leading and leadership.epoch > first, LEAD_AGAIN_SECS), (
            f"no new leadership since epoch {first} (leading={leadership.leading})"
        )
        entry = await running.plane.store.get(leadership.key)
        assert entry is not None and entry.create_revision == leadership.epoch
    finally:
        await asyncio.wait_for(running.stop(grace=0.5), STOP_SECS)


async def test_signing_in_to_a_paused_etcd_fails_within_the_store_bound(etcd: EtcdProcess) -> None:
    assert etcd.pid is not None
    store = EtcdStore([etcd.endpoint], user="root", password="secret", timeout=1.0)
    os.kill(etcd.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match="authentication"):
            await asyncio.wait_for(store.connect(), STOP_SECS)
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
        await store.close()
