"""Twins on different replicas: two agent processes with one agent id, one connected to
the leader and one to a follower. No replica holds both streams; the leader sees the
follower's agents through its relay, and counts, shows and logs the twins once. Real etcd,
a follower replica and the agents in their own processes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.app import RunningControlPlane
from mission_control.server.etcd_process import EtcdProcess

from tests.server.test_agent_instances import started, stats, until
from tests.support.procs import Proc
from tests.support.procs import control_plane as replica_process

TWIN = "cross-twin"
SAID = f"two processes call themselves {TWIN} "


@pytest.mark.timeout(120)
async def test_twins_on_two_replicas_are_counted_shown_and_logged_once_by_the_leader(
    control_plane: RunningControlPlane,  # the leader, in this process
    etcd_server: EtcdProcess,
    prefix: str,
    spawned: list[Proc],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mission_control.server.hub")
    leader = control_plane
    await until(lambda: leader.plane.leading)
    follower, follower_address = await asyncio.to_thread(
        _follower, etcd_server.endpoint, prefix, "twin-follower"
    )
    spawned.append(follower)
    address = f"127.0.0.1:{leader.port}"
    await started(spawned, address, TWIN)
    behind = await started(spawned, follower_address, TWIN)
    await started(spawned, follower_address, "alone-behind")  # one process: no twin
    shown = await _stats_until(address, lambda s: s.agent_ids_shared > 0)
    assert (shown.agent_ids_shared, list(shown.shared_agent_ids)) == (1, [TWIN])
    # the follower holds one process of the id: it sees no twin
    assert (await stats(follower_address)).agent_ids_shared == 0
    behind.send("quit")  # gone from the follower: the leader no longer counts it
    await _stats_until(address, lambda s: s.agent_ids_shared == 0)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(SAID)]
    assert len(said) == 1, said


async def _stats_until(
    address: str, check: Callable[[pb.ErrorStatistics], bool], timeout: float = 60.0
) -> pb.ErrorStatistics:
    deadline = time.monotonic() + timeout
    while not check(shown := await stats(address)):
        assert time.monotonic() < deadline, f"not shown in time: {shown.agent_ids_shared}"
        await asyncio.sleep(0.1)
    return shown


def _follower(endpoint: str, prefix: str, instance: str) -> tuple[Proc, str]:
    return replica_process(endpoint, prefix, "--instance-id", instance)
