"""The fleet-wide retry budget: agents in two processes, leased by a real control plane,
retry within one budget for the fleet; without a control plane each keeps its own."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from mission_control.client import MissionControl, limits
from mission_control.client.config import policy_to_proto
from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.fleet_retries import UNLIMITED, FleetRetryBudget
from mission_control.client.policy import Backoff, FleetLimits, RetryBudget, ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess

from tests.support.procs import ROOT, Proc, control_plane, python

MIN_PER_SECOND = 4.0
LEASE_SECS = 0.5
SOME_FAIL = 4  # every 4th call fails

POLICY = ServicePolicy(
    service="flaky",
    timeout_secs=5,
    max_retries=3,
    failure_threshold=1_000_000,  # the breaker stays CLOSED: only the budget stops retries
    rate_limit_requests=1_000_000,
    backoff=Backoff(initial_secs=0.001, max_secs=0.001, jitter=0),
    retry_budget=RetryBudget(ratio=0, min_retries_per_second=MIN_PER_SECOND, window_secs=1),
    fleet=FleetLimits(lease_secs=LEASE_SECS),
    fleet_retry_budget=True,
)


def test_the_fleet_retries_within_one_budget(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    with grpc.insecure_channel(address) as channel:
        pb_grpc.ControlPlaneServiceStub(channel).PutPolicy(
            pb.PutPolicyRequest(policy=policy_to_proto(POLICY)), timeout=10
        )
    procs = [python("tests.support.retry_proc", address, "flaky", f"p{i}", "2", "40") for i in range(2)]
    spawned.extend(procs)
    for proc in procs:
        assert '"ready": true' in proc.wait_for('{"ready"', timeout=60)
        proc.lines.clear()
    # every 4th call fails each attempt: the fleet is healthy, its minimum in force
    _run(procs, 2, SOME_FAIL)  # warm-up: the first leases arrive
    seconds = 4.0
    calls, retries = _run(procs, seconds, SOME_FAIL)
    # One budget for the four agents: the fleet's minimum over the run, plus one lease
    # period spent ahead; four budgets of their own would allow four times the minimum.
    fleet_bound = MIN_PER_SECOND * (seconds + 2 * LEASE_SECS)
    assert calls >= 40  # the agents did call
    assert 0 < retries <= fleet_bound, (retries, calls)
    assert not _stats(address).retry_minimum_withheld
    # A full outage: once a period's attempts failed more than half, no minimum; only the
    # leases made before (two periods ahead at most) are spent. A minimum in force would
    # allow as many as above.
    calls, retries = _run(procs, seconds, 1)
    assert calls >= 40
    assert retries <= MIN_PER_SECOND * 3 * LEASE_SECS, (retries, calls)
    stats = _stats(address)
    assert list(stats.retry_minimum_withheld) == ["flaky"]
    command = [sys.executable, "-m", "mission_control.server.cli", "stats", "--server", address]
    table = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert "fleet retry budget flaky: no minimum leased (the fleet is failing)" in table
    shown = {usage.resource: usage for usage in stats.fleet_limits}
    assert "flaky.calls" not in shown  # metered, not a limit
    assert shown["flaky.retries"].agents == 4 and shown["flaky.retries"].demanded > 0


def _stats(address: str) -> pb.ErrorStatistics:
    with grpc.insecure_channel(address) as channel:
        request = pb.GetErrorStatisticsRequest()
        return pb_grpc.ControlPlaneServiceStub(channel).GetErrorStatistics(request, timeout=10).statistics


def _run(procs: list[Proc], seconds: float, every: int) -> tuple[int, int]:
    """All agents call for ``seconds``, every ``every``-th call failing: (calls, retries)."""
    for proc in procs:
        proc.lines.clear()
        proc.send(f"run {seconds} {every}")
    runs = [json.loads(proc.wait_for("{", 60)) for proc in procs]
    assert all(all(r["leased"]) for r in runs)
    return sum(r["calls"] for r in runs), sum(r["attempts"] - r["calls"] for r in runs)


def test_without_a_control_plane_each_agent_keeps_its_own_budget() -> None:
    mc = MissionControl("alone", config={"flaky": POLICY})
    attempts = 0

    @mc.guard("flaky")
    def call() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):
        call()
    assert attempts == 1 + POLICY.max_retries  # the local budget's minimum allows them


def test_an_agent_whose_lease_ran_out_spends_its_own_budget_not_its_last_lease() -> None:
    # Injected clock: the last lease gave this agent no retries (the fleet's were all used
    # elsewhere); then the control plane goes quiet. Its own budget's minimum applies again.
    retries = LeasedBudget(0.0, LEASE_SECS, None, now=0.0)
    calls = LeasedBudget(UNLIMITED, LEASE_SECS, 1.0, now=0.0)
    failures = LeasedBudget(UNLIMITED, LEASE_SECS, 1.0, now=0.0)
    budget = FleetRetryBudget(limits.RetryBudget(0.0, MIN_PER_SECOND, 1.0), retries, calls, failures)
    retries.apply(period=1, units=0.0, start=0.0, period_secs=LEASE_SECS, agents=2, fleet_units=2.0)
    budget.record_call(0.1)
    assert not budget.try_retry(0.1)  # leased, and the lease is 0: no retry
    later = 10 * LEASE_SECS  # many periods with no lease
    budget.record_call(later)
    assert budget.try_retry(later)  # the per-agent budget's minimum
    lease = {"units": 0.0, "period_secs": LEASE_SECS, "agents": 2, "fleet_units": 2.0}
    retries.apply(period=10**6, start=later + 0.1, **lease)  # type: ignore[arg-type]
    assert not budget.try_retry(later + 0.2)  # leased again: the lease decides
