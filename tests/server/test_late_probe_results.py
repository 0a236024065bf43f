"""A probe granted after the HALF_OPEN's first success may still run when the others close
the breaker: its result, reported after the CLOSED, is its holder's own (the permit is kept
as an earlier one until reported or expired), not a claim beyond what it could report — no
"refused or cut" warning for an honest agent (it showed after check-begun HALF_OPENs in
the demo, one or two a run)."""

from __future__ import annotations

import asyncio

import grpc
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support import procs
from tests.support.agents import RawAgent
from tests.support.fleet_check import probe_granted
from tests.support.fleets import put_policy
from tests.support.procs import Proc

POLICY = ServicePolicy("llm", failure_threshold=1, success_threshold=2, wait_duration_secs=1.0)


def test_closing_keeps_the_permits_still_out_until_their_results_come() -> None:
    breaker = CircuitBreaker("llm", POLICY, 0.0)
    breaker.record(0.0, 0, 1)
    breaker.tick(1.0)
    assert breaker.acquire_probe(1.0, "a", ttl=5) == 1
    breaker.record_probes(1.1, "a", 1, 0)  # one succeeded: two may be out now
    assert breaker.acquire_probe(1.1, "b", ttl=5) == 1 and breaker.acquire_probe(1.1, "c", ttl=5) == 1
    assert breaker.record_probes(1.2, "b", 1, 0) is not None
    assert breaker.state is BreakerState.CLOSED
    assert breaker.earlier_of("c") == 1  # c's probe still runs
    breaker.record_probes(1.3, "c", 1, 0)  # its result: the permit goes back
    assert breaker.earlier_of("c") == 0 and breaker.permits_out(1.3) == 0
    breaker.acquire_probe(1.1, "d", ttl=5)
    assert breaker.earlier_of("d") == 0
    breaker.record(2.0, 0, 1)
    breaker.tick(3.0)
    assert breaker.acquire_probe(3.0, "d", ttl=5) == 1


def test_an_unreported_permit_kept_after_closing_expires() -> None:
    breaker = CircuitBreaker("llm", POLICY, 0.0)
    breaker.record(0.0, 0, 1)
    breaker.tick(1.0)
    breaker.acquire_probe(1.0, "a", ttl=5)
    breaker.record_probes(1.1, "a", 1, 0)
    breaker.acquire_probe(1.1, "b", ttl=5)
    breaker.acquire_probe(1.1, "c", ttl=5)
    breaker.record_probes(1.2, "b", 1, 0)
    assert breaker.permits_out(1.2) == 1
    assert breaker.permits_out(6.2) == 0 and breaker.earlier_of("c") == 0


async def test_a_probe_result_reported_after_the_others_closed_the_breaker_is_not_refused(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    proc, address = procs.control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    put_policy(
        address,
        policy_pb2.ServicePolicy(
            service="llm", failure_threshold=1, success_threshold=2, wait_duration_secs=0.3,
            rate_limit_requests=10**6,
        ),
    )  # fmt: skip
    async with (
        RawAgent(address, "a", ("llm",)) as a,
        RawAgent(address, "b", ("llm",)) as b,
        RawAgent(address, "c", ("llm",)) as c,
    ):
        await a.report("llm", failures=1, trailing_failures=1)
        await a.wait_for(lambda: a.state("llm") == pb.BREAKER_STATE_HALF_OPEN)
        # asked again until granted, as agents do (an ask not granted at once is kept 1 s)
        await probe_granted(a, "llm")
        generation = a.grants[0].generation
        for agent in (b, c):  # waiting: one is out
            await agent.ask_probe("llm")
        await a.report_numbered(1, "llm", probe_successes=1, probe_generation=generation)
        # one succeeded: two may be out now
        await asyncio.gather(probe_granted(b, "llm"), probe_granted(c, "llm"))
        await b.report_numbered(1, "llm", probe_successes=1, probe_generation=generation)
        await c.wait_for(lambda: c.state("llm") == pb.BREAKER_STATE_CLOSED)
        await c.report_numbered(1, "llm", successes=1, probe_successes=1, probe_generation=generation)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        stats = stub.GetErrorStatistics(pb.GetErrorStatisticsRequest(), timeout=10).statistics
    assert dict(stats.reports_refused) == {}
