"""Spooled writes whose order does not matter, replayed several at a time
(``spool_replay_parallel``), by a sync and an async spool: each made once, several in
flight at once, and a write the service fails again tried again without the others."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mission_control.client import ConfigurationError, MissionControl
from mission_control.client.breaker import BreakerState
from mission_control.client.spool import Spooled, current_write_id

from tests.client.test_spool import POLICY, poll


class ParallelStore:
    """Down until told otherwise; then each write waits until another one is in flight
    too (at most 1.5 s, within the policy's 2 s timeout: a HALF_OPEN probe goes alone),
    and ``failing`` keys fail their first tries."""

    def __init__(self, failing: dict[str, int] | None = None) -> None:
        self.down = True
        self.failing = dict(failing or {})
        self.applied: list[str | None] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def save(self, key: str) -> str:
        if self.down:
            raise ConnectionRefusedError("storage is down")
        with self.lock:
            if self.failing.get(key, 0) > 0:
                self.failing[key] -= 1
                raise ConnectionRefusedError(f"{key} fails this time")
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        deadline = time.monotonic() + 1.5
        while self.most_in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        with self.lock:
            self.in_flight -= 1
            self.applied.append(current_write_id())
        return key

    async def asave(self, key: str) -> str:
        return await asyncio.to_thread(self.save, key)


def spool_then_recover(mc: MissionControl, store: ParallelStore, save: Any, n: int) -> list[str]:
    receipts = [save(f"k{i}") for i in range(n)]
    assert all(isinstance(r, Spooled) for r in receipts)
    store.down = False
    return [r.write_id for r in receipts]


def test_writes_replayed_in_parallel_are_each_made_once_several_at_a_time(tmp_path: Path) -> None:
    store = ParallelStore(failing={"k3": 2})
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path, spool_replay_parallel=4)(store.save)
    ids = spool_then_recover(mc, store, save, 12)
    assert poll(lambda: len(save.spool) == 0)
    assert Counter(store.applied) == Counter(ids)  # each once, k3 too once it went through
    assert 2 <= store.most_in_flight <= 4
    assert (save.spool.replayed, save.spool.dropped) == (12, 0)
    assert mc.view.get("storage_backend").tally.spool_replayed == 12
    mc.close()


async def test_async_writes_replayed_in_parallel_are_each_made_once_several_at_a_time(
    tmp_path: Path,
) -> None:
    store = ParallelStore(failing={"k3": 2})
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path, spool_replay_parallel=4)(store.asave)
    receipts = [await save(f"k{i}") for i in range(12)]
    store.down = False
    deadline = time.monotonic() + 30
    while len(save.spool) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert Counter(store.applied) == Counter(r.write_id for r in receipts)
    assert 2 <= store.most_in_flight <= 4
    assert (save.spool.replayed, save.spool.dropped) == (12, 0)
    mc.close()


def test_a_parallel_replay_below_one_is_refused_with_every_bad_field(tmp_path: Path) -> None:
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    with pytest.raises(ConfigurationError) as refused:
        mc.guard("storage_backend", spool=tmp_path, spool_replay_parallel=0, endpoint="")
    fields = [field for field, _ in refused.value.violations]
    assert fields == ["endpoint", "spool_replay_parallel"]
    assert not list(tmp_path.iterdir())  # nothing was opened
    mc.close()


class GatedStore:
    """Down until told otherwise; then every key but the first and ``late`` waits for
    ``gate`` (at most 10 s) before it is applied."""

    def __init__(self) -> None:
        self.down = True
        self.gate = threading.Event()
        self.applied: list[str] = []
        self.lock = threading.Lock()

    def save(self, key: str) -> str:
        if self.down:
            raise ConnectionRefusedError("storage is down")
        if key not in ("k0", "late"):
            self.gate.wait(10)
        with self.lock:
            self.applied.append(key)
        return f"saved {key}"

    async def asave(self, key: str) -> str:
        return await asyncio.to_thread(self.save, key)


def closed_by_k0(mc: MissionControl, store: GatedStore) -> bool:
    """The first replay (the probe) was made and closed the breaker."""
    return "k0" in store.applied and mc.view.get("storage_backend").local.state is BreakerState.CLOSED


def test_a_new_write_is_made_at_once_beside_a_replay_that_keeps_no_order(tmp_path: Path) -> None:
    store = GatedStore()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path, spool_replay_parallel=2)(store.save)
    assert all(isinstance(save(f"k{i}"), Spooled) for i in range(5))
    store.down = False
    assert poll(lambda: closed_by_k0(mc, store))  # k1 (and k2) now held at the store
    assert save("late") == "saved late"  # not held back for the drain, nor spooled behind it
    assert store.applied == ["k0", "late"] and len(save.spool) >= 4  # still draining
    store.gate.set()
    assert poll(lambda: len(save.spool) == 0)
    assert sorted(store.applied) == ["k0", "k1", "k2", "k3", "k4", "late"]
    assert save.spool.spooled == 5
    mc.close()


async def test_a_new_async_write_is_made_at_once_beside_a_replay_that_keeps_no_order(
    tmp_path: Path,
) -> None:
    store = GatedStore()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = mc.guard("storage_backend", spool=tmp_path, spool_replay_parallel=2)(store.asave)
    for i in range(5):
        assert isinstance(await save(f"k{i}"), Spooled)
    store.down = False
    deadline = time.monotonic() + 30
    while not closed_by_k0(mc, store) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await save("late") == "saved late"
    assert store.applied == ["k0", "late"] and len(save.spool) >= 4  # still draining
    store.gate.set()
    while len(save.spool) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sorted(store.applied) == ["k0", "k1", "k2", "k3", "k4", "late"]
    mc.close()
