"""A guard's write spool in one process: what is spooled and what is not, order, the bound,
refusals, and the counts reported to a real control plane and shown by `stats`."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from mission_control.client import MissionControl, OperationTimeout, ResourceExhausted, StorageFailure
from mission_control.client.config import policy_to_proto
from mission_control.client.policy import Backoff, ServicePolicy
from mission_control.client.spool import Spooled, current_write_id
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.support.procs import ROOT, Proc, control_plane

POLICY = ServicePolicy(
    service="storage_backend",
    timeout_secs=2,
    max_retries=1,
    failure_threshold=2,
    success_threshold=1,
    wait_duration_secs=0.2,
    backoff=Backoff(initial_secs=0.01, jitter=0),
)


class Store:
    """A storage backend that is down until told otherwise; remembers what it applied."""

    def __init__(self) -> None:
        self.down = True
        self.refused: set[str] = set()  # keys it refuses as bad input
        self.applied: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def save(self, key: str) -> str:
        if self.down:
            raise ConnectionRefusedError("storage is down")
        if key in self.refused:
            raise ValueError(f"{key} can never be stored")
        with self.lock:
            self.applied.append((key, current_write_id()))
        return f"saved {key}"


def poll(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def spooled_save(mc: MissionControl, store: Store, directory: Path, **options: Any) -> Any:
    return mc.guard("storage_backend", spool=directory, **options)(store.save)


def test_writes_the_service_cannot_take_are_kept_and_made_in_order(tmp_path: Path) -> None:
    store = Store()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = spooled_save(mc, store, tmp_path)
    receipts = [save(f"k{i}") for i in range(5)]
    assert all(isinstance(r, Spooled) for r in receipts)
    assert "earlier writes are waiting" in receipts[-1].reason  # later ones queue behind
    assert [r.seq for r in receipts] == [1, 2, 3, 4, 5]
    store.down = False
    assert poll(lambda: len(save.spool) == 0)
    assert store.applied == [(f"k{i}", r.write_id) for i, r in enumerate(receipts)]
    assert save("k5") == "saved k5"  # the spool is empty: the write is made at once
    spool = save.spool
    assert (spool.spooled, spool.replayed, spool.dropped) == (5, 5, 0)
    tally = mc.view.get("storage_backend").tally
    assert (tally.spooled, tally.spool_replayed, tally.spool_dropped) == (5, 5, 0)
    mc.close()


def test_the_callers_own_error_is_raised_not_spooled(tmp_path: Path) -> None:
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})

    @mc.guard("storage_backend", spool=tmp_path)
    def save(key: str) -> None:
        raise ValueError(f"bad key {key}")

    with pytest.raises(ValueError, match="bad key"):
        save("k")
    assert len(save.spool) == 0 and save.spool.spooled == 0
    mc.close()


def test_a_full_spool_drops_the_write_and_says_so(tmp_path: Path) -> None:
    store = Store()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = spooled_save(mc, store, tmp_path / "behind", spool_max_writes=2)
    save("a"), save("b")
    with pytest.raises(ResourceExhausted, match="storage_backend write spool at 2/2") as caught:
        save("c")  # queued behind the two: the spool is full
    assert any("not spooled" in note for note in caught.value.__notes__)
    assert (save.spool.spooled, save.spool.dropped) == (2, 1)
    assert mc.view.get("storage_backend").tally.spool_dropped == 1
    mc.close()
    fresh = MissionControl("spool-agent", config={"storage_backend": POLICY})  # its breaker CLOSED
    alone = spooled_save(fresh, store, tmp_path / "alone", spool_max_writes=0)
    with pytest.raises(ResourceExhausted) as failed:
        alone("d")  # made and failed: the service's error is the cause
    assert isinstance(failed.value.__cause__, StorageFailure)
    fresh.close()


def test_what_a_spool_refuses(tmp_path: Path) -> None:
    store = Store()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    guard = mc.guard("storage_backend", spool=tmp_path / "one")
    save = guard(store.save)
    with pytest.raises(TypeError, match="one function"):
        guard(store.save)
    with pytest.raises(TypeError, match="JSON values or bytes"):
        save(object())
    assert len(save.spool) == 0
    mc.close()


def test_spool_counts_reach_the_control_plane_and_stats(
    tmp_path: Path, etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    store = Store()
    with grpc.insecure_channel(address) as channel:
        request = pb.PutPolicyRequest(policy=policy_to_proto(POLICY))
        pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(request, timeout=10)
    with MissionControl("spool-agent", control_plane=address, flush_interval=0.02) as mc:
        assert mc.wait_connected(30)
        assert poll(lambda: mc.policy("storage_backend").wait_duration_secs == POLICY.wait_duration_secs)
        save = spooled_save(mc, store, tmp_path)
        for i in range(3):
            save(f"k{i}")
        store.down = False
        assert poll(lambda: len(save.spool) == 0)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)

            def reported() -> pb.ErrorStatistics:
                return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics

            ok = poll(lambda: (reported().spooled, reported().spool_replayed) == (3, 3))
            assert ok, reported()
    shown = subprocess.run(
        [sys.executable, "-m", "mission_control.server.cli", "stats", "--server", address],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert "writes spooled         3 (3 replayed, 0 dropped)" in shown.stdout, shown


def test_a_write_the_service_refuses_on_replay_is_dropped_not_retried_for_ever(tmp_path: Path) -> None:
    store = Store()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = spooled_save(mc, store, tmp_path)
    save("poison"), save("fine")
    store.refused.add("poison")
    store.down = False
    assert poll(lambda: len(save.spool) == 0)
    assert [key for key, _ in store.applied] == ["fine"]
    assert (save.spool.replayed, save.spool.dropped) == (1, 1)
    mc.close()


def test_nothing_is_replayed_before_the_agent_is_started(tmp_path: Path) -> None:
    store = Store()
    first = MissionControl("spool-agent", config={"storage_backend": POLICY})
    spooled_save(first, store, tmp_path)("k0")
    first.close()
    store.down = False
    later = MissionControl("spool-agent", control_plane="127.0.0.1:1", config={"storage_backend": POLICY})
    save = spooled_save(later, store, tmp_path)  # its spool holds k0; the agent is not started
    asked, may_go = [], save.spool._open_for

    def counted() -> float:
        asked.append(1)
        return may_go()  # type: ignore[no-any-return]

    save.spool._open_for = counted
    assert poll(lambda: len(asked) >= 2)  # the replayer has looked (and must have waited) twice
    assert len(save.spool) == 1 and save.spool.dropped == 0 and store.applied == []
    later.start()
    assert poll(lambda: len(save.spool) == 0)
    assert [key for key, _ in store.applied] == ["k0"]
    later.close()


def test_a_deleted_spool_directory_refuses_receipts_and_the_replayer_outlives_it(tmp_path: Path) -> None:
    store = Store()
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    directory = tmp_path / "spool"
    save = spooled_save(mc, store, directory)
    receipts = [save(f"k{i}") for i in range(3)]
    assert all(isinstance(r, Spooled) for r in receipts)
    shutil.rmtree(directory)
    with pytest.raises(ResourceExhausted) as refused:
        save("k3")  # its record would go to a deleted file: no receipt
    assert any("broken" in note for note in refused.value.__notes__)
    assert (save.spool.spooled, save.spool.dropped) == (3, 1)
    store.down = False
    assert poll(lambda: save.spool.broken is not None and "marked done" in save.spool.broken)
    assert [key for key, _ in store.applied] == ["k0"]  # made, then its done mark failed
    with pytest.raises(ResourceExhausted):
        save("k4")  # still broken: the caller is told, and it is counted
    assert save.spool.dropped == 2 and mc.view.get("storage_backend").tally.spool_dropped == 2
    directory.mkdir()  # the replayer keeps trying the mark, and goes on once it is written
    assert poll(lambda: len(save.spool) == 0)
    assert save.spool._thread.is_alive()
    assert [key for key, _ in store.applied] == ["k0", "k1", "k2"]  # k0 once: marked, not made again
    assert (save.spool.replayed, save.spool.dropped) == (3, 2)
    mc.close()


class FlakyStore(Store):
    """Up, but fails the next writes with the given errors (raised after it applied the
    write, for a TimeoutError: the answer was lost, the write was not)."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.down = False
        self.errors = list(errors)

    def save(self, key: str) -> str:
        if self.errors:
            error = self.errors.pop(0)
            if isinstance(error, TimeoutError):
                super().save(key)
            raise error
        return super().save(key)


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_write_that_may_have_been_applied_is_spooled_only_when_idempotent(
    tmp_path: Path, idempotent: bool
) -> None:
    # Timed out (then, idempotent, retried and refused): the first attempt may have been applied.
    errors: list[Exception] = [TimeoutError("no answer in time")]
    store = FlakyStore(*errors, *([ConnectionRefusedError("down")] if idempotent else []))
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = spooled_save(mc, store, tmp_path, idempotent=idempotent)
    if idempotent:
        assert isinstance(save("k0"), Spooled)
        assert poll(lambda: len(save.spool) == 0)
        assert [key for key, _ in store.applied] == ["k0", "k0"]  # it may run twice: it was told so
    else:
        with pytest.raises(OperationTimeout) as caught:
            save("k0")
        assert any("may have reached the service" in note for note in caught.value.__notes__)
        assert save.spool.spooled == 0 and len(save.spool) == 0
        assert save("k1") == "saved k1"
        assert [key for key, _ in store.applied] == ["k0", "k1"]  # k0 once, as the caller was told
    refused = FlakyStore(ConnectionRefusedError("down"), ConnectionRefusedError("down"))
    other = spooled_save(mc, refused, tmp_path / "refused")
    assert isinstance(other("k2"), Spooled)  # surely not applied: kept, whatever the guard says
    mc.close()


class SlowStore(Store):
    def save(self, key: str) -> str:
        time.sleep(0.02)
        return super().save(key)


def test_once_the_service_serves_new_writes_wait_for_the_replay_instead_of_joining_the_spool(
    tmp_path: Path,
) -> None:
    store = SlowStore()
    patient = dataclasses.replace(POLICY, timeout_secs=30)  # the longest a new write waits
    mc = MissionControl("spool-agent", config={"storage_backend": patient})
    save = spooled_save(mc, store, tmp_path)
    receipts = [save(f"k{i}") for i in range(20)]
    assert all(isinstance(r, Spooled) for r in receipts)
    store.down = False
    assert poll(lambda: save.spool.replayed >= 1)  # the breaker lets calls through again
    assert save("late") == "saved late"  # made (after the spool drained), not spooled
    assert [key for key, _ in store.applied] == [*(f"k{i}" for i in range(20)), "late"]
    assert save.spool.spooled == 20 and len(save.spool) == 0
    mc.close()


def test_a_replayed_write_gets_the_arguments_it_was_given(tmp_path: Path) -> None:
    got: list[tuple[Any, ...]] = []
    down = [True]
    mc = MissionControl("spool-agent", config={"storage_backend": POLICY})

    @mc.guard("storage_backend", spool=tmp_path)
    def save(*args: Any, **kwargs: Any) -> None:
        if down[0]:
            raise ConnectionRefusedError("storage is down")
        got.append((args, kwargs))

    args = (("k", 1), b"\x00raw", {"$bytes": "a key like a tag", "n": [1.5, (2, None)]})
    kwargs = {"row": {"cells": ("a", b"b")}, "$tuple": True}
    assert isinstance(save(*args, **kwargs), Spooled)
    down[0] = False
    assert poll(lambda: len(save.spool) == 0)
    assert got == [(args, kwargs)] and type(got[0][0][0]) is tuple  # equal, tuples still tuples
    with pytest.raises(TypeError) as refused:
        save({1: "a"}, when={3}, ratio=float("nan"))
    message = str(refused.value)
    assert "args[0] has keys that are not strings" in message
    assert "kwargs['when'] is a set" in message and "kwargs['ratio'] is nan" in message
    mc.close()


def test_a_write_lost_to_a_corrupt_record_is_counted_dropped_and_the_rest_made(tmp_path: Path) -> None:
    store = Store()
    first = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = spooled_save(first, store, tmp_path)
    for key in ("k0", "k1", "k2"):
        assert isinstance(save(key), Spooled)
    first.close()
    segment = next(tmp_path.glob("segment-*.log"))
    data = bytearray(segment.read_bytes())
    data[data.index(b"k1")] ^= 0xFF  # the second write's record fails its checksum
    segment.write_bytes(bytes(data))
    store.down = False
    again = MissionControl("spool-agent", config={"storage_backend": POLICY})
    save = spooled_save(again, store, tmp_path)
    assert poll(lambda: len(save.spool) == 0)
    assert [key for key, _ in store.applied] == ["k0", "k2"]
    assert save.spool.dropped == 1 and again.view.get("storage_backend").tally.spool_dropped == 1
    again.close()
