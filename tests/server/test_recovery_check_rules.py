"""The recovery check's rules with an injected clock and asker: a SERVING answer ends an
OPEN at once (HALF_OPEN, through the engine), never in the first half of a wait that
followed a failed probe; one check per service and target, only while OPEN, bounded;
followers ask nothing; the hold survives the stored record; bad values list every field."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format
from mission_control.client.breaker import BreakerState, CircuitBreaker
from mission_control.client.config import policy_from_mapping, policy_to_proto
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy
from mission_control.client.recovery_check import RecoveryCheck
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.recovery_checks import MAX_PER_TARGET, MIN_PER_TARGET, RecoveryChecks, per_target

CHECK = RecoveryCheck("127.0.0.1:9", interval_secs=0.25, timeout_secs=0.5)
POLICY = ServicePolicy(
    "llm", failure_threshold=2, success_threshold=1, wait_duration_secs=30.0, recovery_check=CHECK
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fleet(clock: Clock, policy: ServicePolicy = POLICY) -> FleetBreakers:
    return FleetBreakers(lambda name: policy, clock=clock, wall=lambda: 1.7e9)


def open_it(breakers: FleetBreakers, name: str = "llm") -> None:
    summary = pb.OutcomeSummary(service=name, failures=2, trailing_failures=2)
    assert breakers.record("a", summary)
    assert breakers.get(name).state is BreakerState.OPEN


def test_a_serving_answer_moves_an_open_breaker_to_half_open_at_once() -> None:
    breaker = CircuitBreaker("llm", POLICY, 0.0)
    breaker.record(0.0, 0, 2)
    assert breaker.open_remaining(0.1) > 29
    move = breaker.recover(0.1, "recovery check: SERVING")
    assert move is not None and move.new is BreakerState.HALF_OPEN
    assert breaker.recover(0.2, "again") is None  # only an OPEN


def test_after_a_failed_probe_no_check_ends_the_first_half_of_the_grown_wait() -> None:
    breaker = CircuitBreaker("llm", POLICY, 0.0)
    breaker.record(0.0, 0, 2)
    breaker.recover(1.0, "check")
    assert breaker.acquire_probe(1.0, "a", ttl=5) == 1
    assert breaker.record_probes(1.0, "a", 0, 1) is not None  # the probe failed: OPEN, 60 s
    assert breaker.open_remaining(1.0) == pytest.approx(60.0)
    assert breaker.recover(30.9, "check") is None
    assert breaker.state is BreakerState.OPEN
    assert breaker.recover(31.0, "check") is not None


def test_a_probe_failing_after_the_wait_ended_holds_no_check_back() -> None:
    breaker = CircuitBreaker("llm", POLICY, 0.0)
    breaker.record(0.0, 0, 2)
    assert breaker.tick(30.0) is not None  # the wait ended: no check began this HALF_OPEN
    breaker.acquire_probe(30.0, "a", ttl=5)
    assert breaker.record_probes(30.0, "a", 0, 1) is not None
    assert breaker.recover(30.1, "check") is not None  # the check was not the one lying


def test_a_stored_half_open_a_check_began_keeps_the_hold_on_its_failed_probe() -> None:
    clock = Clock()
    leader = fleet(clock)
    open_it(leader)
    leader.recover("llm", "recovery check: 127.0.0.1:9 SERVING")
    other = fleet(clock)
    other.adopt("llm", leader.to_record("llm"), 5)
    other.get("llm").acquire_probe(clock.now, "a", ttl=5)
    other.record("a", pb.OutcomeSummary(service="llm", probe_failures=1))
    assert other.recover("llm", "check") is None  # held: the first half of its 60 s wait


def test_the_hold_is_stored_and_taken_by_another_replica() -> None:
    clock = Clock()
    leader = fleet(clock)
    open_it(leader)
    leader.recover("llm", "check")
    breaker = leader.get("llm")
    breaker.acquire_probe(clock.now, "a", ttl=5)
    leader.record("a", pb.OutcomeSummary(service="llm", probe_failures=1))
    record = leader.to_record("llm")
    assert json_format.Parse(record, pb.Breaker()).HasField("recovery_check_from")
    other = fleet(clock)
    other.adopt("llm", record, 7)
    clock.now += 29.0
    assert other.recover("llm", "check") is None
    clock.now += 1.1
    assert other.recover("llm", "check") is not None


def asking(breakers: FleetBreakers, agents: list[str]) -> None:
    for agent in agents:  # refused while OPEN: each wants to call, and is in the demand
        breakers.record(agent, pb.OutcomeSummary(service="llm", rejected=1))


def test_a_half_open_a_check_began_grants_success_threshold_permits_at_once() -> None:
    clock = Clock()
    policy = ServicePolicy(
        "llm", failure_threshold=2, success_threshold=3, wait_duration_secs=30.0, recovery_check=CHECK
    )
    breakers = fleet(clock, policy)
    grants: list[str] = []
    breakers.grant_listeners.append(lambda agent, grant: grants.append(agent))
    open_it(breakers)
    asking(breakers, ["a", "b", "c", "d"])
    breakers.recover("llm", "recovery check: 127.0.0.1:9 SERVING")
    assert len(grants) == 3  # success_threshold, not one: the check already said it serves
    assert breakers.get("llm").permits_out(clock.now) == 3
    assert breakers.request_probe("d", "llm") is None  # never more than success_threshold out
    for agent in grants:
        breakers.record(agent, pb.OutcomeSummary(service="llm", probe_successes=1))
    assert breakers.get("llm").state is BreakerState.CLOSED


def test_a_half_open_the_wait_ended_grants_one_permit_until_a_probe_succeeded() -> None:
    clock = Clock()
    policy = ServicePolicy("llm", failure_threshold=2, success_threshold=3, wait_duration_secs=30.0)
    breakers = fleet(clock, policy)
    grants: list[str] = []
    breakers.grant_listeners.append(lambda agent, grant: grants.append(agent))
    open_it(breakers)
    clock.now += 29.5
    asking(breakers, ["a", "b", "c", "d"])
    clock.now += 0.5
    breakers.tick()
    assert len(grants) == 1  # a service that may still be down costs one probe
    breakers.record(grants[0], pb.OutcomeSummary(service="llm", probe_successes=1))
    assert len(grants) == 4 and breakers.get("llm").permits_out(clock.now) == 3


def test_a_stored_half_open_a_check_began_grants_as_many_on_another_replica() -> None:
    clock = Clock()
    policy = ServicePolicy("llm", failure_threshold=2, success_threshold=3, recovery_check=CHECK)
    leader = fleet(clock, policy)
    open_it(leader)
    leader.recover("llm", "recovery check: 127.0.0.1:9 SERVING")
    other = fleet(clock, policy)
    other.adopt("llm", leader.to_record("llm"), 5)
    assert other.get("llm").probe_limit() == 3


def waited_half_open(clock: Clock) -> tuple[FleetBreakers, list[str]]:
    """A breaker (success_threshold 3) whose wait ended: its lone probe granted and out."""
    policy = ServicePolicy(
        "llm", failure_threshold=2, success_threshold=3, wait_duration_secs=30.0, recovery_check=CHECK
    )
    breakers = fleet(clock, policy)
    grants: list[str] = []
    breakers.grant_listeners.append(lambda agent, grant: grants.append(agent))
    open_it(breakers)
    clock.now += 29.5
    asking(breakers, ["a", "b", "c", "d"])
    clock.now += 0.5
    breakers.tick()
    assert len(grants) == 1
    return breakers, grants


def test_a_serving_check_lets_the_rest_join_the_lone_probe_of_a_half_open_the_wait_began() -> None:
    clock = Clock()
    breakers, grants = waited_half_open(clock)
    assert breakers.widen("llm")
    assert len(grants) == 3 and breakers.get("llm").permits_out(clock.now) == 3  # never more
    assert not breakers.widen("llm")  # once
    for agent in grants[1:]:
        breakers.record(agent, pb.OutcomeSummary(service="llm", probe_successes=1))
    breakers.record(grants[0], pb.OutcomeSummary(service="llm", probe_successes=1))
    assert breakers.get("llm").state is BreakerState.CLOSED


def test_the_lone_probe_failing_after_a_check_joined_it_holds_no_check_back() -> None:
    clock = Clock()
    breakers, grants = waited_half_open(clock)
    breakers.widen("llm")
    breakers.record(grants[0], pb.OutcomeSummary(service="llm", probe_failures=1))  # sent before
    assert breakers.get("llm").state is BreakerState.OPEN
    assert breakers.recover("llm", "recovery check: SERVING") is not None  # no hold
    assert breakers.get("llm").probe_limit() == 3


def test_a_widened_half_open_is_forgotten_with_its_generation() -> None:
    clock = Clock()
    breakers, grants = waited_half_open(clock)
    record = breakers.to_record("llm")
    breakers.widen("llm")
    other = fleet(clock, breakers.get("llm").policy)
    other.adopt("llm", record, 5)
    assert other.get("llm").probe_limit() == 1  # not stored: another replica lets one out first
    breakers.record(grants[0], pb.OutcomeSummary(service="llm", probe_failures=1))
    clock.now += 60.0  # the grown wait ended: the next HALF_OPEN lets one out first again
    breakers.tick()
    assert breakers.get("llm").state is BreakerState.HALF_OPEN
    assert breakers.get("llm").probe_limit() == 1


async def test_a_half_open_the_wait_began_is_checked_while_its_lone_probe_is_out() -> None:
    clock = Clock()
    breakers, grants = waited_half_open(clock)
    asked: list[str] = []

    async def ask(check: RecoveryCheck) -> str:
        asked.append(check.target)
        return "SERVING"

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    checks._on_breaker(breakers.to_proto("llm"))  # it began before the checks listened
    assert checks.start_due(clock.now) == 1
    await settle()
    assert checks.widened == 1 and len(grants) == 3
    clock.now += 1.0
    assert checks.start_due(clock.now) == 0  # three may go: nothing more to ask
    assert asked == ["127.0.0.1:9"]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_check_per_service_and_target_only_while_open() -> None:
    clock = Clock()
    breakers = fleet(clock)
    asked: list[str] = []
    answer = "NOT_SERVING"

    async def ask(check: RecoveryCheck) -> str:
        asked.append(check.target)
        return answer

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    assert checks.start_due(clock.now) == 0  # nothing OPEN: nothing asked
    for name in ("llm", "llm/gpt-x", "llm/gpt-y"):
        open_it(breakers, name)
    assert checks.start_due(clock.now) == 1
    await settle()
    assert asked == ["127.0.0.1:9"]
    assert checks.start_due(clock.now + 0.1) == 0  # its interval has not passed
    clock.now += 0.25
    answer = "SERVING"
    assert checks.start_due(clock.now) == 1
    await settle()
    assert {n: breakers.get(n).state for n in ("llm", "llm/gpt-x", "llm/gpt-y")} == dict.fromkeys(
        ("llm", "llm/gpt-x", "llm/gpt-y"), BreakerState.HALF_OPEN
    )
    clock.now += 1.0
    assert checks.start_due(clock.now) == 0  # none OPEN any more
    assert checks.half_opens == 3
    assert dict(checks.answers) == {"NOT_SERVING": 1, "SERVING": 1}
    assert dict(checks.checks_by_service) == {"llm": 2}


async def test_a_check_in_flight_does_not_hold_back_the_next_and_a_few_at_most_run_per_target() -> None:
    clock = Clock()
    breakers = fleet(clock)
    slow = asyncio.Event()
    answers = iter(["timeout", "timeout", "timeout", "SERVING"])

    async def ask(check: RecoveryCheck) -> str:
        answer = next(answers)
        if answer == "timeout":  # the target answers slowly while unwell: held until released
            await slow.wait()
        return answer

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    open_it(breakers)
    assert per_target(CHECK) == MIN_PER_TARGET  # a 0.5 s timeout spans 2 intervals of 0.25 s
    for _ in range(MIN_PER_TARGET):
        assert checks.start_due(clock.now) == 1
        clock.now += 0.25  # the next interval: started beside the one still waiting
    assert checks.start_due(clock.now) == 0  # MIN_PER_TARGET running: a dead target gets no more
    assert checks.running() == MIN_PER_TARGET
    slow.set()
    await settle()
    assert checks.running() == 0
    assert checks.start_due(clock.now) == 1  # the target is well now: seen at this interval
    await settle()
    assert breakers.get("llm").state is BreakerState.HALF_OPEN


async def test_a_follower_asks_nothing_and_checks_running_are_bounded() -> None:
    clock = Clock()
    policies = {f"s{i}": ServicePolicy(f"s{i}", failure_threshold=2, recovery_check=CHECK) for i in range(5)}
    breakers = FleetBreakers(lambda name: policies[name], clock=clock, wall=lambda: 1.7e9)
    hang = asyncio.Event()

    async def ask(check: RecoveryCheck) -> str:
        await hang.wait()
        return "SERVING"

    leading = False
    checks = RecoveryChecks(breakers, lambda: leading, ask=ask, clock=clock, max_running=2)
    for name in policies:
        open_it(breakers, name)
    runner = asyncio.create_task(checks.run(every=0.001))
    await asyncio.sleep(0.02)
    assert not checks.checks_by_service and len(checks._running) == 0
    leading = True
    await asyncio.sleep(0.02)
    assert len(checks._running) == 2  # bounded
    leading = False
    await asyncio.sleep(0.02)
    assert len(checks._running) == 0  # a replica that stops leading stops its checks
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert all(breakers.get(n).state is BreakerState.OPEN for n in policies)


def test_a_check_may_ask_every_20_ms_and_no_more_often() -> None:
    table = {"recovery_check": {"target": "h:1", "interval_secs": 0.02}}
    check = policy_from_mapping(table, service="llm").recovery_check
    assert check == RecoveryCheck("h:1", interval_secs=0.02)
    table["recovery_check"]["interval_secs"] = 0.019
    with pytest.raises(ConfigurationError) as err:
        policy_from_mapping(table, service="llm")
    assert [field for field, _ in err.value.violations] == ["recovery_check.interval_secs"]


def test_bad_recovery_check_values_are_all_listed() -> None:
    table = {"recovery_check": {"target": "no port", "interval_secs": 0.001, "timeout_secs": -1, "x": 1}}
    with pytest.raises(ConfigurationError) as err:
        policy_from_mapping(table, service="llm")
    assert {f for f, _ in err.value.violations} == {
        "recovery_check.target",
        "recovery_check.interval_secs",
        "recovery_check.timeout_secs",
        "recovery_check.x",
    }
    with pytest.raises(ConfigurationError) as err:
        policy_from_mapping(
            {"recovery_check": {"target": "http://h/health", "health_service": "x"}}, service="s"
        )
    assert [f for f, _ in err.value.violations] == ["recovery_check.health_service"]
    with pytest.raises(ConfigurationError) as err:
        policy_from_mapping({"recovery_check": {}}, service="s")
    assert [f for f, _ in err.value.violations] == ["recovery_check.target"]


def test_the_recovery_check_goes_through_the_proto_and_back() -> None:
    policy = policy_from_mapping(
        {"recovery_check": {"target": "up:50051", "health_service": "llm"}}, service="s"
    )
    assert policy.recovery_check == RecoveryCheck("up:50051", "llm", 0.25, 1.0)
    message = policy_to_proto(policy)
    assert message.recovery_check.target == "up:50051"
    http = policy_from_mapping(
        {"recovery_check": {"target": "https://api.example.com/v1/models"}}, service="s"
    )
    assert http.recovery_check is not None and http.recovery_check.is_http


@pytest.mark.parametrize(
    "target",
    [
        "unix:1234",  # gRPC: the local socket "1234", not host "unix" port 1234
        "unix-abstract:4242",
        "UNIX:1234",
        "dns:80",
        "ipv4:80",
        "vsock:2",
        "http://127.0.0.1:1/\x1b[2J",  # control characters would reach the breaker's reason
        "http://127.0.0.1:1/\x00",
        "https://h/\x7f",
    ],
)
def test_a_target_that_is_a_grpc_scheme_or_holds_control_characters_is_refused(target: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        RecoveryCheck(target)
    assert [f for f, _ in err.value.violations] == ["target"]


def test_hosts_that_only_look_like_schemes_are_checks_still() -> None:
    for target in ("unix.example:1234", "dns1:53", "localhost:2379", "[::1]:50051", "https://h/a?b=c#d"):
        assert RecoveryCheck(target).target == target


def test_as_many_checks_run_at_once_as_the_timeout_spans_intervals_within_bounds() -> None:
    """A check every 0.02 s with a 0.15 s timeout (the demo's storage check): while the
    target answers slowly a new one starts at every interval (8 at once), so its recovery
    is seen one interval after it, not when one of 3 checks in flight has timed out (a new
    one every 0.05 s)."""
    assert per_target(RecoveryCheck("127.0.0.1:9", interval_secs=0.02, timeout_secs=0.15)) == 8
    assert per_target(RecoveryCheck("127.0.0.1:9", interval_secs=0.02, timeout_secs=0.1)) == 5
    assert per_target(RecoveryCheck("127.0.0.1:9", interval_secs=0.25, timeout_secs=1.0)) == 4
    assert per_target(RecoveryCheck("127.0.0.1:9", interval_secs=0.02, timeout_secs=60)) == MAX_PER_TARGET
    assert per_target(RecoveryCheck("127.0.0.1:9", interval_secs=1.0, timeout_secs=0.5)) == MIN_PER_TARGET


async def test_a_slow_target_is_checked_at_every_interval_up_to_its_bound() -> None:
    clock = Clock()
    fast = RecoveryCheck("127.0.0.1:9", interval_secs=0.02, timeout_secs=0.15)
    breakers = fleet(clock, ServicePolicy("llm", failure_threshold=2, recovery_check=fast))
    slow = asyncio.Event()

    async def ask(check: RecoveryCheck) -> str:
        await slow.wait()
        return "timeout"

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    open_it(breakers)
    started = 0
    for _ in range(12):
        started += checks.start_due(clock.now)
        clock.now += 0.021  # the next interval
    assert started == checks.running() == 8  # one each interval, 8 at once at most
    slow.set()
    await settle()
    assert checks.running() == 0


async def test_an_endpoint_placeholder_asks_about_each_endpoint_and_moves_only_its_breaker() -> None:
    """One endpoint of a service fails while the others serve: a check about the whole
    service says SERVING all along (every HALF_OPEN it begins for that endpoint is a lie);
    with ``{endpoint}`` each endpoint breaker is asked about, and moved by, its own answer."""
    clock = Clock()
    per_endpoint = RecoveryCheck("127.0.0.1:9", health_service="models/{endpoint}", interval_secs=0.25)
    breakers = fleet(clock, ServicePolicy("llm", failure_threshold=2, recovery_check=per_endpoint))
    asked: list[str] = []

    async def ask(check: RecoveryCheck) -> str:
        asked.append(check.health_service)
        return "SERVING" if check.health_service == "models/openai/gpt-x" else "NOT_SERVING"

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=clock)
    for name in ("llm/openai/gpt-x", "llm/anthropic/claude"):
        open_it(breakers, name)
    assert checks.start_due(clock.now) == 2  # one check per endpoint, not one per service
    await settle()
    assert sorted(asked) == ["models/anthropic/claude", "models/openai/gpt-x"]
    assert breakers.get("llm/openai/gpt-x").state is BreakerState.HALF_OPEN
    assert breakers.get("llm/anthropic/claude").state is BreakerState.OPEN


def test_the_endpoint_placeholder_is_the_only_brace_allowed() -> None:
    assert RecoveryCheck("127.0.0.1:9", health_service="{endpoint}").health_service == "{endpoint}"
    with pytest.raises(ConfigurationError, match="health_service"):
        RecoveryCheck("127.0.0.1:9", health_service="{model}")
