"""A lost epoch record does not block a leader's term, with real processes (etcd, the control
plane, agent processes): a record put by hand 240 s ahead of the clock (within the skew
allowed) is taken by the next control plane and its agents; the record is then deleted and
the control plane restarted. Its epoch (the time it took over) is below what the agents
hold, and they ignore its leases — for its whole term on the code before. The agents report
the epoch they hold, and the leader moves above it."""

from __future__ import annotations

import json
import time

import pytest
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.lease_epoch import RECORD, parse_record

from tests.server.test_fleet_limits import GRANULARITY, LIMIT, WINDOW, start_agents, worst_window
from tests.server.test_lease_epoch_wipe import SERVICE, leased_run, put_policy
from tests.support.etcd import etcdctl
from tests.support.procs import Proc, control_plane

AHEAD_MS = 240_000


def leased_again(agents: Proc, what: str) -> dict[str, list[float]]:
    """The agents' admissions in a run in which each spent more than 10 calls under a lease."""
    deadline = time.monotonic() + 60
    while True:
        result = leased_run(agents)
        if all(len(times) > 10 for times in result["leased"].values()):
            admitted: dict[str, list[float]] = result["admitted"]
            return admitted
        assert time.monotonic() < deadline, f"{what}: not leased again: {result['leased']}"


@pytest.mark.timeout(240)
def test_agents_holding_a_higher_epoch_are_leased_again_after_the_record_was_lost(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    record = f"{prefix}/{RECORD}"
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    put_policy(address)
    agents = start_agents(address, SERVICE, "e", [80.0, 80.0])  # 160/s against 100/s: the bound bites
    spawned.append(agents)
    leased_again(agents, "at first")

    plane.kill()
    hostile = round(time.time() * 1000) + AHEAD_MS
    etcdctl(
        etcd_server.endpoint,
        "put",
        record,
        json.dumps({"epoch": hostile, "leader": "x", "until": time.time()}),
    )
    plane, _ = control_plane(etcd_server.endpoint, prefix, "--listen", address)
    spawned.append(plane)
    leased_again(agents, "above the record put by hand")  # the agents now hold its epoch + 1

    plane.kill()
    etcdctl(etcd_server.endpoint, "del", record)
    plane, _ = control_plane(etcd_server.endpoint, prefix, "--listen", address)
    spawned.append(plane)
    assert time.time() * 1000 < hostile, "took too long: the new leader's own epoch is above the agents'"
    admitted = leased_again(agents, "after the record was lost")
    stored = parse_record(etcdctl(etcd_server.endpoint, "get", record, "--print-value-only").encode())
    assert stored.epoch > hostile + 1
    every = [t for times in admitted.values() for t in times]
    assert worst_window(every, WINDOW) <= LIMIT + GRANULARITY, worst_window(every, WINDOW)
