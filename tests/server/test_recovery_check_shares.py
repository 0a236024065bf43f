"""Recovery checks share their slots: one service (however many endpoints it checks with
"{endpoint}") or one health server that never answers cannot hold every slot, so another
service's check still starts at its interval. The rules with an injected clock and asker;
then with real parts (a control plane process, a hung gRPC health server, a serving one)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy, service_of
from mission_control.client.recovery_check import RecoveryCheck
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.recovery_checks import (
    MAX_PER_ADDRESS,
    MAX_PER_SERVICE,
    MAX_RUNNING,
    RecoveryChecks,
    address_of,
)

from tests.support import procs
from tests.support.agents import RawAgent
from tests.support.fleets import put_policy
from tests.support.polling import poll
from tests.support.procs import Proc

HUNG = "127.0.0.1:9"
WELL = "127.0.0.1:10"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def opened(breakers: FleetBreakers, name: str) -> None:
    breakers.record("a", pb.OutcomeSummary(service=name, failures=2, trailing_failures=2))
    assert breakers.get(name).state is BreakerState.OPEN


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def checked(
    policies: dict[str, ServicePolicy], clock: Clock
) -> tuple[FleetBreakers, RecoveryChecks, asyncio.Event]:
    """Breakers of ``policies``, and their checks: a check of HUNG waits until released,
    one of any other target says SERVING at once."""
    breakers = FleetBreakers(lambda name: policies[service_of(name)], clock=clock, wall=lambda: 1.7e9)
    hang = asyncio.Event()

    async def ask(check: RecoveryCheck) -> str:
        if check.target == HUNG:
            await hang.wait()
            return "timeout"
        return "SERVING"

    return breakers, RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock), hang


def policy(service: str, target: str, health_service: str = "") -> ServicePolicy:
    check = RecoveryCheck(target, health_service, interval_secs=0.02, timeout_secs=60.0)
    return ServicePolicy(service, failure_threshold=2, max_endpoints=100, recovery_check=check)


def fill(checks: RecoveryChecks, clock: Clock, turns: int = 40) -> None:
    for _ in range(turns):
        checks.start_due(clock.now)
        clock.now += 0.021


async def test_a_service_checking_its_endpoints_on_a_hung_server_leaves_slots_for_another() -> None:
    """Six endpoints, each its own target with "{endpoint}", eight checks each at most
    (a 60 s timeout spans that many intervals): before, they held all 32 slots, and
    another service's check waited until theirs timed out."""
    clock = Clock()
    policies = {"svc": policy("svc", HUNG, "{endpoint}"), "other": policy("other", WELL)}
    breakers, checks, hang = checked(policies, clock)
    for i in range(6):
        opened(breakers, f"svc/e{i}")
    fill(checks, clock)
    assert checks.running() == MAX_PER_SERVICE < MAX_RUNNING
    opened(breakers, "other")
    assert checks.start_due(clock.now) == 1
    await settle()
    assert breakers.get("other").state is BreakerState.HALF_OPEN
    hang.set()
    await settle()
    assert checks.running() == 0


async def test_the_endpoints_of_a_service_at_its_share_are_checked_in_turn() -> None:
    clock = Clock()
    breakers, checks, hang = checked({"svc": policy("svc", HUNG, "{endpoint}")}, clock)
    for i in range(12):  # more endpoints than the service's share
        opened(breakers, f"svc/e{i}")
    assert checks.start_due(clock.now) == MAX_PER_SERVICE
    hang.set()
    await settle()
    clock.now += 0.021
    assert checks.start_due(clock.now) == MAX_PER_SERVICE
    asked = {key[2] for key in checks._last}
    assert asked == {f"e{i}" for i in range(12)}  # the longest unchecked first: all of them
    hang.clear()


async def test_an_endpoint_that_opens_later_takes_the_place_of_a_check_of_one_asking_twice() -> None:
    """The service's share is held by the endpoints that opened first (hung, several each):
    one that opens later is asked at once, in place of the oldest check of an endpoint
    with more than one running, not after their 60 s timeout."""
    clock = Clock()
    breakers, checks, hang = checked({"svc": policy("svc", HUNG, "{endpoint}")}, clock)
    for i in range(3):
        opened(breakers, f"svc/e{i}")
    fill(checks, clock)
    assert checks.running() == MAX_PER_SERVICE
    for i in range(3, 6):
        opened(breakers, f"svc/e{i}")
    assert checks.start_due(clock.now) == 3
    assert checks.running() == MAX_PER_SERVICE
    assert {key[2] for key in checks._running} == {f"e{i}" for i in range(6)}
    clock.now += 0.021
    assert checks.start_due(clock.now) == 0  # each asks already: none takes another's place
    await settle()
    hang.set()
    await settle()
    assert checks.running() == 0 and not checks._by_service and not checks._by_address


async def test_many_hung_services_leave_a_place_for_a_service_that_opens_later() -> None:
    clock = Clock()
    policies = {f"s{i}": policy(f"s{i}", f"127.0.0.{i + 2}:9") for i in range(6)}
    policies["other"] = policy("other", WELL)
    breakers = FleetBreakers(lambda name: policies[service_of(name)], clock=clock, wall=lambda: 1.7e9)
    hang = asyncio.Event()

    async def ask(check: RecoveryCheck) -> str:
        if check.target != WELL:
            await hang.wait()
            return "timeout"
        return "SERVING"

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    for i in range(6):
        opened(breakers, f"s{i}")
    fill(checks, clock)
    assert checks.running() == MAX_RUNNING  # six servers, each hung: all 32 taken
    opened(breakers, "other")
    assert checks.start_due(clock.now) == 1
    assert checks.running() == MAX_RUNNING
    await settle()
    assert breakers.get("other").state is BreakerState.HALF_OPEN
    hang.set()
    await settle()
    assert checks.running() == 0


async def test_services_on_one_hung_health_server_leave_the_other_half_of_the_slots() -> None:
    clock = Clock()
    policies = {f"s{i}": policy(f"s{i}", HUNG) for i in range(6)}
    policies["other"] = policy("other", WELL)
    breakers, checks, hang = checked(policies, clock)
    for i in range(6):
        opened(breakers, f"s{i}")
    fill(checks, clock)
    assert checks.running() == MAX_PER_ADDRESS < MAX_RUNNING
    opened(breakers, "other")
    assert checks.start_due(clock.now) == 1
    await settle()
    assert breakers.get("other").state is BreakerState.HALF_OPEN
    hang.set()
    await settle()


def test_the_address_of_a_target_is_its_server() -> None:
    assert address_of("Health.Local:50051") == "health.local:50051"
    assert address_of("http://H:8080/a") == address_of("http://h:8080/b?x=1") == "http://h:8080"
    assert address_of("https://h/a") != address_of("http://h/a")


class Hung(health_pb2_grpc.HealthServicer):
    """A health server that never answers: each Check waits until its caller gives up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.ended = 0
        self.asked: set[str] = set()
        self.release = threading.Event()

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> object:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.asked.add(request.service)
        try:
            while context.is_active() and not self.release.wait(0.05):
                pass
        finally:
            with self.lock:
                self.now -= 1
                self.ended += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "hung")


@pytest.fixture
def servers() -> Iterator[tuple[Hung, str, str]]:
    hung = Hung()
    hung_server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    health_pb2_grpc.add_HealthServicer_to_server(hung, hung_server)
    hung_port = hung_server.add_insecure_port("127.0.0.1:0")
    well = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, well)
    well_port = well.add_insecure_port("127.0.0.1:0")
    hung_server.start()
    well.start()
    try:
        yield hung, f"127.0.0.1:{hung_port}", f"127.0.0.1:{well_port}"
    finally:
        hung.release.set()
        hung_server.stop(0)
        well.stop(0)


def settled(hung: Hung, secs: float = 1.0) -> bool:
    """Whether the checks in flight at the hung server stayed as many for ``secs``."""
    before = hung.now
    time.sleep(secs)
    return hung.now == before


async def test_a_hung_health_server_of_one_service_does_not_hold_back_another_services_check(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], servers: tuple[Hung, str, str]
) -> None:
    """A service's endpoints all OPEN, checked ("{endpoint}") on a health server that never
    answers (60 s timeout): another service's OPEN is ended by its own check while the hung
    checks still wait — before, they held every slot and it waited until they timed out."""
    hung, hung_at, well_at = servers
    proc, address = procs.control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    endpoints = [f"svc/e{i}" for i in range(6)]
    for service, target, health_service in (("svc", hung_at, "{endpoint}"), ("other", well_at, "")):
        put_policy(
            address,
            policy_pb2.ServicePolicy(
                service=service,
                failure_threshold=1,
                wait_duration_secs=600,
                max_endpoints=100,
                rate_limit_requests=10**6,
                recovery_check=policy_pb2.RecoveryCheckPolicy(
                    target=target, health_service=health_service, interval_secs=0.02, timeout_secs=60
                ),
            ),
        )
    async with RawAgent(address, "opener", (*endpoints, "other")) as agent:
        for name in endpoints:
            await agent.report(name, failures=1, trailing_failures=1)
        await agent.wait_for(lambda: all(agent.state(n) == pb.BREAKER_STATE_OPEN for n in endpoints), 30)
        await asyncio.to_thread(poll, lambda: len(hung.asked) == len(endpoints))
        await asyncio.to_thread(poll, lambda: settled(hung))  # every slot the service may take, taken
        await agent.report("other", failures=1, trailing_failures=1)
        await agent.wait_for(lambda: agent.state("other") != pb.BREAKER_STATE_CLOSED, 30)
        # Within 40 s: before any hung check could have timed out (60 s), which is when
        # the old code let it start.
        await agent.wait_for(lambda: agent.state("other") == pb.BREAKER_STATE_HALF_OPEN, 40)
    assert len(hung.asked) == len(endpoints) and hung.peak < 32
