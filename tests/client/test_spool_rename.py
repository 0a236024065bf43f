"""A spool outlives its write function's name: release 1 spools writes from a module-level
``save``, release 2 (another process on the same directory) decorates ``Store.save``. The
directory names the spool, so release 2 makes every write; a write the new function cannot
take (its arguments no longer fit) is set aside in ``held.log``, never dropped. Each case
runs with sync releases and with ``async def`` ones (replayed by an asyncio task)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from mission_control.client import MissionControl
from mission_control.client.config import policy_to_proto
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.support.polling import poll
from tests.support.procs import ROOT, Proc, control_plane

RELEASE_1 = """
import json, sys
from mission_control.client import MissionControl
mc = MissionControl("release-1", config={})

@mc.guard("storage_backend", spool=sys.argv[1])
def save(key, row):
    raise ConnectionRefusedError("storage is down")

print(json.dumps([type(save(f"k{i}", {"n": i})).__name__ for i in range(3)]))
"""

RELEASE_2 = """
import json, sys, time
from mission_control.client import MissionControl
mc = MissionControl("release-2", config={})
made = []

class Store:
    @staticmethod
    def save(key, row):
        made.append([key, row])

class Narrow:
    @staticmethod
    def save(key):  # release 2 dropped an argument
        made.append([key])

save = mc.guard("storage_backend", spool=sys.argv[1])(Store.save if sys.argv[2] == "same" else Narrow.save)
deadline = time.monotonic() + 30
while len(save.spool) and time.monotonic() < deadline:
    time.sleep(0.05)
spool = save.spool
held = [[fn, list(args)] for _, fn, args, _ in spool.held_writes()] if hasattr(spool, "held_writes") else None
print(json.dumps({"made": made, "left": len(spool), "replayed": spool.replayed, "dropped": spool.dropped,
                  "held": getattr(spool, "held", None), "held_writes": held}))
"""

RELEASE_1_ASYNC = """
import asyncio, json, sys
from mission_control.client import MissionControl
mc = MissionControl("release-1", config={})

@mc.guard("storage_backend", spool=sys.argv[1])
async def save(key, row):
    raise ConnectionRefusedError("storage is down")

async def main():
    return [type(await save(f"k{i}", {"n": i})).__name__ for i in range(3)]

print(json.dumps(asyncio.run(main())))
"""

RELEASE_2_ASYNC = """
import asyncio, json, sys, time
from mission_control.client import MissionControl
made = []

class Store:
    @staticmethod
    async def save(key, row):
        made.append([key, row])

class Narrow:
    @staticmethod
    async def save(key):  # release 2 dropped an argument
        made.append([key])

async def main():
    mc = MissionControl("release-2", config={})
    chosen = Store.save if sys.argv[2] == "same" else Narrow.save
    spool = mc.guard("storage_backend", spool=sys.argv[1])(chosen).spool
    # The counts change on the spool's I/O thread just after the spool empties: wait for both.
    deadline = time.monotonic() + 30
    while (len(spool) or spool.replayed + spool.dropped + spool.held < 3) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    held = None
    if hasattr(spool, "held_writes"):
        held = [[fn, list(args)] for _, fn, args, _ in spool.held_writes()]
    mc.close()
    return {"made": made, "left": len(spool), "replayed": spool.replayed, "dropped": spool.dropped,
            "held": getattr(spool, "held", None), "held_writes": held}

print(json.dumps(asyncio.run(main())))
"""

RELEASES = {"sync": (RELEASE_1, RELEASE_2), "async": (RELEASE_1_ASYNC, RELEASE_2_ASYNC)}


def release(script: str, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", list(RELEASES))
def test_writes_spooled_by_a_renamed_function_are_made_by_the_new_one(tmp_path: Path, kind: str) -> None:
    release_1, release_2 = RELEASES[kind]
    spool = str(tmp_path / "spool")
    assert release(release_1, spool) == ["Spooled"] * 3
    after = release(release_2, spool, "same")
    assert after == {
        "made": [[f"k{i}", {"n": i}] for i in range(3)], "left": 0, "replayed": 3, "dropped": 0,
        "held": 0, "held_writes": [],
    }  # fmt: skip


@pytest.mark.parametrize("kind", list(RELEASES))
def test_writes_the_new_function_cannot_take_are_held_not_dropped(tmp_path: Path, kind: str) -> None:
    release_1, release_2 = RELEASES[kind]
    spool = str(tmp_path / "spool")
    assert release(release_1, spool) == ["Spooled"] * 3
    after = release(release_2, spool, "narrow")
    assert isinstance(after, dict)
    counts = (after["left"], after["replayed"], after["dropped"], after["held"])
    assert (after["made"], counts) == ([], (0, 0, 0, 3))
    assert after["held_writes"] == [["save", [f"k{i}", {"n": i}]] for i in range(3)]
    # The next release still sees them (kept on disk), and they stay held, once each.
    again = release(release_2, spool, "same")
    assert isinstance(again, dict)
    assert (again["made"], again["held"], len(again["held_writes"])) == ([], 3, 3)


def stats(address: str, *flags: str) -> str:
    # The bound is against a hang only: at load 40 a CLI process that had printed all of
    # its answer was still running after 60 s.
    shown = subprocess.run(
        [sys.executable, "-m", "mission_control.server.cli", "stats", "--server", address, *flags],
        capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown
    return shown.stdout


def test_held_writes_are_counted_up_to_the_control_plane_and_shown_by_stats(
    tmp_path: Path, etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    spool = str(tmp_path / "spool")
    assert release(RELEASE_1, spool) == ["Spooled"] * 3
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    with grpc.insecure_channel(address) as channel:
        request = pb.PutPolicyRequest(policy=policy_to_proto(ServicePolicy(service="storage_backend")))
        pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(request, timeout=10)
    with MissionControl("release-2", control_plane=address, flush_interval=0.02) as mc:
        assert mc.wait_connected(30)

        @mc.guard("storage_backend", spool=spool)
        def save(key: str) -> None:  # release 2 dropped an argument: every write is held
            raise AssertionError("no spooled write fits this function")

        poll(lambda: save.spool.held == 3)  # type: ignore[attr-defined]
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ControlPlaneServiceStub(channel)

            def reported() -> pb.ErrorStatistics:
                return stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5).statistics

            poll(lambda: reported().spool_held == 3)
    counts = json.loads(stats(address, "--json"))
    spool_counts = [counts[name] for name in ("spooled", "spool_replayed", "spool_dropped", "spool_held")]
    assert spool_counts == [0, 0, 0, 3]
    table = stats(address)
    assert "writes spooled         0 (0 replayed, 0 dropped)" in table, table
    assert "spooled writes held    3 (in the spools' held.log: not made, see README)" in table, table
