"""I5 across a leader change, through the store (real etcd, two control-plane processes, an
agent process reaching the leader through a TCP proxy that withholds the answers).

A breaker closes while etcd is down: the leader decides it from memory, and its write
waits (tried again every half second). An agent then reports failures the leader counts,
but whose acknowledgements never reach the agent. etcd is back, the leader stores the
CLOSED, and dies. The next leader loads that record; the agent, on it now, sends again
every batch it saw no acknowledgement for. Each failure must count once: the breaker opens
at its threshold, not before — the record holds the state as decided, and no count toward
a trip is taken from a record."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import grpc
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.agents import RawAgent
from tests.support.fleets import leader_of, put_policy
from tests.support.polling import poll
from tests.support.probers import stored
from tests.support.procs import Proc, control_plane
from tests.support.tcp_pause import PausableProxy

PREFIX = "/stored-counts"
SERVICE = "stored_counts_svc"
THRESHOLD = 5
UNACKED = THRESHOLD - 1  # failures whose acknowledgement is lost: one below the threshold


def breaker(address: str) -> pb.Breaker:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        return stub.GetBreaker(pb.GetBreakerRequest(name=SERVICE), timeout=5).breaker


def stopped(etcd: EtcdProcess) -> Callable[[], None]:
    """etcd stopped (its data kept); returns what starts it again. While it is down every
    write fails at once and is tried again: each try takes its record afresh."""
    etcd.stop()
    return etcd.start


def stored_state(etcd: EtcdProcess) -> str | None:
    return stored(etcd.endpoint, PREFIX, SERVICE).get("state")


async def closed_from_memory(address: str, etcd: EtcdProcess) -> Callable[[], None]:
    """Another agent trips the breaker on ``address`` (the leader) and, once etcd holds its
    HALF_OPEN, probes it CLOSED with etcd stopped; returns what starts etcd again."""
    async with RawAgent(address, "tripper", (SERVICE,), series="t", instance="t1") as tripper:
        for sequence in range(1, THRESHOLD + 1):
            await tripper.report_numbered(sequence, SERVICE, failures=1, trailing_failures=1)
        await asyncio.to_thread(poll, lambda: stored_state(etcd) == "BREAKER_STATE_HALF_OPEN")
        await tripper.wait_for(lambda: tripper.state(SERVICE) == pb.BREAKER_STATE_HALF_OPEN, 30)
        await tripper.ask_probe(SERVICE)
        await tripper.wait_for(lambda: bool(tripper.grants), 30)
        grant = tripper.grants[0]
        thaw = stopped(etcd)
        try:
            success = pb.OutcomeSummary(
                service=SERVICE,
                successes=1,
                probe_successes=1,
                probe_generation=grant.generation,
                probe_grants=[grant.number],
            )
            batch = pb.OutcomeBatch(sequence=THRESHOLD + 1, summaries=[success])
            await tripper.send(pb.ConnectRequest(outcomes=batch))
            await tripper.wait_for(lambda: tripper.state(SERVICE) == pb.BREAKER_STATE_CLOSED, 30)
        except BaseException:
            thaw()
            raise
    return thaw


async def test_a_new_leader_counts_no_failure_twice_through_a_stored_record(
    etcd: EtcdProcess, spawned: list[Proc]
) -> None:
    proxy = await PausableProxy().start()
    try:
        first, first_at = await asyncio.to_thread(control_plane, etcd.endpoint, PREFIX, "--instance-id", "r1")
        spawned.append(first)
        await asyncio.to_thread(poll, lambda: leader_of(etcd.endpoint, PREFIX) == "r1")
        policy = policy_pb2.ServicePolicy(
            service=SERVICE,
            failure_threshold=THRESHOLD,
            success_threshold=1,
            wait_duration_secs=1,
            timeout_secs=2,
            max_retries=0,
        )
        await asyncio.to_thread(put_policy, first_at, policy)
        proxy.target = first_at
        args = [sys.executable, "-m", "tests.support.failing_agent", "reporter", proxy.address, SERVICE]
        spawned.append(reporter := Proc(args))
        assert '"ready": true' in await asyncio.to_thread(reporter.wait_for, '{"ready"', 60)

        thaw = await closed_from_memory(first_at, etcd)
        try:
            closed = await asyncio.to_thread(breaker, first_at)
            want = {"state": "CLOSED", "generation": closed.generation}
            await asyncio.to_thread(poll, lambda: reporter.ask("state").items() >= want.items())
            proxy.hold_answers()  # from now on no acknowledgement reaches the reporter
            said = await asyncio.to_thread(reporter.ask, f"fail {UNACKED}")
            assert said == {"failed": UNACKED, "other": []}
            await asyncio.to_thread(
                poll, lambda: breaker(first_at).consecutive_failures == UNACKED
            )  # counted by r1 while its write of the CLOSED waits for etcd
            assert (await asyncio.to_thread(reporter.ask, "state"))["unacked"] > 0
        finally:
            thaw()
        # r1 stores the CLOSED (it leads again, or still), then dies
        await asyncio.to_thread(
            poll,
            lambda: stored(etcd.endpoint, PREFIX, SERVICE).get("generation") == str(closed.generation),
        )
        assert stored_state(etcd) == "BREAKER_STATE_CLOSED"
        second, second_at = await asyncio.to_thread(
            control_plane, etcd.endpoint, PREFIX, "--instance-id", "r2"
        )
        spawned.append(second)
        first.kill()  # kill -9: what it counted dies with it
        await asyncio.to_thread(poll, lambda: leader_of(etcd.endpoint, PREFIX) == "r2")

        # the reporter reaches r2 only; the acknowledgements r1 held never arrive
        proxy.target = second_at
        proxy.cut()
        proxy.release_answers()
        await asyncio.to_thread(poll, lambda: reporter.ask("state")["unacked"] == 0)
        now = await asyncio.to_thread(breaker, second_at)
        assert now.state == pb.BREAKER_STATE_CLOSED, (
            f"{pb.BreakerState.Name(now.state)} after {UNACKED} failures "
            f"(threshold {THRESHOLD}): {now.reason}"
        )
        assert now.consecutive_failures == UNACKED

        said = await asyncio.to_thread(reporter.ask, "fail 1")  # the threshold's failure
        assert said == {"failed": THRESHOLD, "other": []}
        opened = await asyncio.to_thread(
            poll, lambda: (found := breaker(second_at)).state == pb.BREAKER_STATE_OPEN and found
        )
        assert opened.failures == THRESHOLD, opened
    finally:
        await proxy.close()
