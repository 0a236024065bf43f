"""Two agent processes configured with one agent id are two agents (each leased, each
counted, shown in stats); a restarted agent (kill -9, started again at once with the same
id) is a new agent whose predecessor's share comes back at once; an agent that sends no
instance id (an older one) works as before. Real control plane, real agent processes."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane

from tests.support.procs import ROOT, Proc, python

SERVICE = "shared_llm"
LIMIT, WINDOW, PERIOD = 200, 2.0, 0.5  # 100 calls/s for the fleet: 50 per lease period
PERIOD_UNITS = LIMIT * PERIOD / WINDOW
RATE = 100.0  # what each agent tries: alone it would take the whole fleet's share
POLICY = policy_pb2.ServicePolicy(
    service=SERVICE,
    rate_limit_requests=LIMIT,
    rate_limit_window_secs=WINDOW,
    failure_threshold=10**6,
    max_retries=0,
    fleet=policy_pb2.FleetLimits(rate_limit=True, lease_secs=PERIOD),
)


def start_agent(address: str, agent_id: str, *extra: str) -> Proc:
    proc = python("tests.support.twin_agent", address, SERVICE, agent_id, *extra)
    assert json.loads(proc.wait_for('{"ready"', timeout=60))["ready"]
    return proc


async def started(spawned: list[Proc], address: str, agent_id: str, *extra: str) -> Proc:
    proc = await asyncio.to_thread(start_agent, address, agent_id, *extra)
    spawned.append(proc)
    return proc


async def until(check: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def stats(address: str) -> pb.ErrorStatistics:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return (await stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=10)).statistics


async def put_policy(address: str, policy: policy_pb2.ServicePolicy = POLICY) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        await stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)


def usage(running: RunningControlPlane) -> pb.FleetLimitUsage | None:
    found = [u for u in running.plane.capacity.usage() if u.service == SERVICE]
    return found[0] if found else None


def fully_leased_to(running: RunningControlPlane, agents: int) -> bool:
    """The whole period is leased out, among ``agents`` agents (nothing held aside)."""
    now = usage(running)
    return now is not None and now.agents == agents and now.leased >= PERIOD_UNITS - 1e-6


async def counts(*procs: Proc) -> list[dict[str, int]]:
    return [await asyncio.to_thread(proc.ask, "counts") for proc in procs]


def the_limit(running: RunningControlPlane):  # type: ignore[no-untyped-def]
    return next(iter(running.plane.capacity.limits.values()))


async def periods_fully_leased(running: RunningControlPlane, agents: int, periods: int) -> None:
    """Wait for ``periods`` more lease periods, each leased out in full among ``agents``."""
    for _ in range(periods):
        seen = the_limit(running).allocated
        await until(
            lambda seen=seen: the_limit(running).allocated > seen and fully_leased_to(running, agents)
        )


async def test_two_processes_with_one_agent_id_are_two_agents(
    control_plane: RunningControlPlane, spawned: list[Proc], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mission_control.server.hub")
    address = f"127.0.0.1:{control_plane.port}"
    await put_policy(address)
    twins = [await started(spawned, address, "copied-agent") for _ in range(2)]
    for twin in twins:
        twin.send(f"pace {RATE}")
    await periods_fully_leased(control_plane, 2, 10)
    done = await counts(*twins)
    leased = [d["leased"] for d in done]
    # each twin admits under its own lease, about half the fleet's share (before, one took
    # every lease and the other admitted nothing)
    assert min(leased) >= 0.25 * sum(leased) > 0, done
    shown = await stats(address)
    assert shown.connected_agents == 2
    assert (shown.agent_ids_shared, list(shown.shared_agent_ids)) == (1, ["copied-agent"])
    said = [r for r in caplog.records if "two processes call themselves copied-agent" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    command = [sys.executable, "-m", "mission_control.server.cli", "stats", "--server", address]
    shown_text = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "agent ids in two processes  1 (copied-agent)" in shown_text.stdout, shown_text


async def test_a_restarted_agent_gets_its_predecessors_share_at_once(
    control_plane: RunningControlPlane, spawned: list[Proc]
) -> None:
    # A predecessor gone without a goodbye would be held aside this long: the test ends
    # well before, so what it sees comes from the restart, not from the grace running out.
    address = f"127.0.0.1:{control_plane.port}"
    held = policy_pb2.ServicePolicy()
    held.CopyFrom(POLICY)
    held.fleet.unleased_secs = 600.0
    await put_policy(address, held)
    limits = control_plane.plane.capacity.limits
    await until(lambda: [limit.unleased_secs for limit in limits.values()] == [600.0])
    steady = await started(spawned, address, "steady")
    doomed = await started(spawned, address, "restarted")
    for proc in (steady, doomed):
        proc.send(f"pace {RATE}")
    await until(lambda: fully_leased_to(control_plane, 2))
    doomed.kill()  # SIGKILL: no goodbye
    again = await started(spawned, address, "restarted")
    again.send(f"pace {RATE}")
    hub = control_plane.plane.hub
    await until(lambda: len(hub.processes_named("restarted")) == 1)
    # the fleet's whole share is leased to the two live agents: nothing held aside for the
    # dead predecessor (its horizon would keep it aside 600 s)
    await periods_fully_leased(control_plane, 2, 2)
    limit = the_limit(control_plane)
    assert not limit.absent, limit.absent
    assert set(limit.holders) == hub.processes_named("steady") | hub.processes_named("restarted")
    # and it spends a lease of its own: its first arrives for the period after the one it
    # joined in, later on a loaded machine, so wait for it (600 s would be the old wait)
    deadline = time.monotonic() + 60
    while (got := await asyncio.to_thread(again.ask, "peek")).get("leased", 0) == 0:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.1)


async def test_an_agent_without_instance_id_works_as_before(
    control_plane: RunningControlPlane, spawned: list[Proc]
) -> None:
    address = f"127.0.0.1:{control_plane.port}"
    await put_policy(address)
    old = await started(spawned, address, "older-agent", "old")
    old.send(f"pace {RATE}")
    # (leases go out half a period ahead: wait until some have been in force)
    await periods_fully_leased(control_plane, 1, 3)
    assert control_plane.plane.hub.processes_named("older-agent") == {"older-agent"}
    shown = await stats(address)
    assert (shown.connected_agents, shown.agent_ids_shared) == (1, 0)
    got = await counts(old)
    assert got[0]["leased"] > 0, got


async def test_two_agents_without_instance_under_one_id_are_two_agents(
    control_plane: RunningControlPlane, spawned: list[Proc]
) -> None:
    # Older agents send no instance: the second process under the id is keyed by its
    # session id while the first holds the id (before, it was never leased and admitted
    # nothing fleet-limited while the first stayed connected).
    address = f"127.0.0.1:{control_plane.port}"
    await put_policy(address)
    twins = [await started(spawned, address, "older-twin", "old") for _ in range(2)]
    for twin in twins:
        twin.send(f"pace {RATE}")
    await periods_fully_leased(control_plane, 2, 6)
    keys = control_plane.plane.hub.processes_named("older-twin")
    assert len(keys) == 2 and "older-twin" in keys, keys
    done = await counts(*twins)
    leased = [d["leased"] for d in done]
    assert min(leased) >= 0.25 * sum(leased) > 0, done
    shown = await stats(address)
    assert (shown.connected_agents, shown.agent_ids_shared) == (2, 1)
