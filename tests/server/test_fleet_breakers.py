"""Breakers decided for the fleet: tripped by outcomes, pushed to every agent, probed once."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from mission_control.client.errors import ConfigurationError
from mission_control.client.status import error_from_rpc_error
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.app import RunningControlPlane
from mission_control.server.engine import PROBE_TTL_SECS

from tests.support.agents import RawAgent

FAST = policy_pb2.ServicePolicy(
    service="llm_provider",
    failure_threshold=3,
    success_threshold=2,
    wait_duration_secs=0.5,
    timeout_secs=1,
)


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition that spans several agents (each agent only wakes its own waiters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def address(running: RunningControlPlane) -> str:
    return f"127.0.0.1:{running.port}"


async def put_policy(running: RunningControlPlane, policy: policy_pb2.ServicePolicy) -> int:
    async with grpc.aio.insecure_channel(address(running)) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        response = await stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)
        return response.revision


async def test_trip_push_half_open_probes_close(control_plane: RunningControlPlane) -> None:
    await put_policy(control_plane, FAST)
    addr = address(control_plane)
    async with (
        RawAgent(addr, "agent-a") as a,
        RawAgent(addr, "agent-b") as b,
        RawAgent(addr, "agent-c") as c,
    ):
        await a.report("llm_provider", successes=1, failures=2, trailing_failures=2)
        await a.report("llm_provider", failures=1, trailing_failures=1)
        # agent B never called the service, yet learns it is OPEN
        await b.wait_for(lambda: b.state("llm_provider") == pb.BREAKER_STATE_OPEN)
        opened = b.breakers["llm_provider"]
        assert opened.failures == 3
        assert 0 < opened.open_remaining.ToNanoseconds() <= 0.5e9
        # B and C are rejected locally while OPEN: they want probes later
        await b.report("llm_provider", rejected=4)
        await c.report("llm_provider", rejected=2)
        await a.wait_for(lambda: a.state("llm_provider") == pb.BREAKER_STATE_HALF_OPEN)
        # one probe first, for the whole fleet
        await until(lambda: len(b.grants) + len(c.grants) == 1)
        await a.ask_probe("llm_provider")
        await asyncio.sleep(0.3)
        assert len(a.grants) + len(b.grants) + len(c.grants) == 1
        first, other = (b, c) if b.grants else (c, b)
        await first.report("llm_provider", probe_successes=1)
        # it succeeded: the rest may go (at most success_threshold, 2, at once)
        await other.ask_probe("llm_provider")
        await until(lambda: len(other.grants) == 1)
        # both probes succeeded: the breaker closes for everyone
        await other.report("llm_provider", probe_successes=1)
        await a.wait_for(lambda: a.state("llm_provider") == pb.BREAKER_STATE_CLOSED)
        await c.wait_for(lambda: c.state("llm_provider") == pb.BREAKER_STATE_CLOSED)


async def test_probe_failure_reopens(control_plane: RunningControlPlane) -> None:
    await put_policy(control_plane, FAST)
    async with RawAgent(address(control_plane), "agent-a") as a:
        await a.report("llm_provider", failures=3)
        await a.wait_for(lambda: a.state("llm_provider") == pb.BREAKER_STATE_OPEN)
        await a.wait_for(lambda: a.state("llm_provider") == pb.BREAKER_STATE_HALF_OPEN)
        await a.ask_probe("llm_provider")
        await a.wait_for(lambda: len(a.grants) == 1)
        await a.report("llm_provider", probe_failures=1)
        await a.wait_for(lambda: a.state("llm_provider") == pb.BREAKER_STATE_OPEN)
        assert a.breakers["llm_provider"].failures == 4


async def test_a_permit_of_a_departed_agent_goes_to_another_once_its_hold_lapsed(
    control_plane: RunningControlPlane,
) -> None:
    timeout = 2.0
    quick = policy_pb2.ServicePolicy(
        service="storage",
        failure_threshold=1,
        success_threshold=1,
        wait_duration_secs=0.3,
        timeout_secs=timeout,
    )
    await put_policy(control_plane, quick)
    addr = address(control_plane)
    async with RawAgent(addr, "agent-b") as b:
        async with RawAgent(addr, "agent-a") as a:
            await a.report("storage", failures=1)
            await a.wait_for(lambda: a.state("storage") == pb.BREAKER_STATE_HALF_OPEN)
            await a.ask_probe("storage")
            await a.wait_for(lambda: len(a.grants) == 1)
            loop = asyncio.get_running_loop()
            granted = loop.time()
            await b.ask_probe("storage")
            await asyncio.sleep(0.2)
            assert b.grants == []
        # A left holding the only permit without a word: cut off, a probe under it may run
        # until its hold (probe TTL + call timeout) lapses, so it goes on to B, still
        # asking, then — not one probe TTL after the grant, beside that probe (before).
        deadline = granted + PROBE_TTL_SECS + timeout + 2.0
        while not b.grants:
            assert loop.time() < deadline, "the permit did not come back once its hold lapsed"
            await b.ask_probe("storage")
            await asyncio.sleep(0.1)
        assert loop.time() - granted > PROBE_TTL_SECS + timeout - 0.5, "granted again within its hold"


async def test_admin_reads(control_plane: RunningControlPlane) -> None:
    await put_policy(control_plane, FAST)
    async with RawAgent(address(control_plane), "agent-a") as a:
        await a.report("llm_provider", failures=3)
        await a.wait_for(lambda: a.state("llm_provider") == pb.BREAKER_STATE_OPEN)
    async with grpc.aio.insecure_channel(address(control_plane)) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        listed = await stub.ListBreakers(pb.ListBreakersRequest(), timeout=5)
        assert [b.name for b in listed.breakers] == ["llm_provider"]
        got = await stub.GetBreaker(pb.GetBreakerRequest(name="llm_provider"), timeout=5)
        assert got.breaker.state == pb.BREAKER_STATE_OPEN
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetBreaker(pb.GetBreakerRequest(name="nothing"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        policy = await stub.GetPolicy(pb.GetPolicyRequest(service="llm_provider"), timeout=5)
        assert policy.policy.failure_threshold == 3 and policy.revision > 0
        assert policy.effective.rate_limit_requests == 100  # seed default filled in
        unknown = await stub.GetPolicy(pb.GetPolicyRequest(service="storage_backend"), timeout=5)
        assert not unknown.HasField("policy") and unknown.effective.timeout_secs == 10
        stats = (await stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=5)).statistics
        assert stats.total_errors == 3 and stats.errors_by_agent["agent-a"] == 3
        assert stats.circuit_breaker_opens == 1


async def test_watch_breakers_and_operator_states(control_plane: RunningControlPlane) -> None:
    async with grpc.aio.insecure_channel(address(control_plane)) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        watch = stub.WatchBreakers(pb.WatchBreakersRequest(names=["vector_db"]))
        await stub.SetBreakerState(
            pb.SetBreakerStateRequest(
                name="vector_db", state=pb.BREAKER_STATE_FORCED_OPEN, reason="maintenance", create=True
            ),
            timeout=5,
        )
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.breaker.name == "vector_db"
        assert first.breaker.state == pb.BREAKER_STATE_FORCED_OPEN
        assert first.breaker.reason == "maintenance" and first.breaker.revision > 0
        await stub.SetBreakerState(
            pb.SetBreakerStateRequest(name="vector_db", state=pb.BREAKER_STATE_CLOSED, create=True), timeout=5
        )
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.previous_state == pb.BREAKER_STATE_FORCED_OPEN
        assert second.breaker.state == pb.BREAKER_STATE_CLOSED
        watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetBreakerState(
                pb.SetBreakerStateRequest(name="vector_db", state=pb.BREAKER_STATE_HALF_OPEN, create=True),
                timeout=5,
            )
        assert isinstance(error_from_rpc_error(caught.value), ConfigurationError)


async def test_invalid_policy_lists_every_field_and_writes_nothing(
    control_plane: RunningControlPlane,
) -> None:
    async with grpc.aio.insecure_channel(address(control_plane)) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        bad = policy_pb2.ServicePolicy(
            service="llm_provider", timeout_secs=0, failure_threshold=-2, rate_limit_window_secs=0
        )
        bad.retryable_codes.append("SOMETIMES")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutPolicy(pb.PutPolicyRequest(policy=bad), timeout=5)
        error = error_from_rpc_error(caught.value)
        assert isinstance(error, ConfigurationError)
        assert {f for f, _ in error.violations} == {
            "timeout_secs",
            "failure_threshold",
            "rate_limit_window_secs",
            "retryable_codes[0]",
        }
        listed = await stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5)
        assert list(listed.policies) == []
