"""A check's health_service is bounded as asked: with each "{endpoint}" replaced by the
longest endpoint name (128 characters) it is at most 200, so a policy that passes asks a
valid name for every endpoint breaker; a longer one is refused by field (also by PutPolicy),
and a check whose asking fails anyway is logged once, not at each interval."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_from_mapping
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy, breaker_name_problem
from mission_control.client.recovery_check import MAX_ENDPOINT_LENGTH, MAX_HEALTH_SERVICE, RecoveryCheck
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.recovery_checks import RecoveryChecks

from tests.support import procs
from tests.support.procs import Proc

OTHERS = MAX_HEALTH_SERVICE - MAX_ENDPOINT_LENGTH  # 72 beside one "{endpoint}"


def refused(health_service: str) -> str:
    with pytest.raises(ConfigurationError) as err:
        RecoveryCheck("127.0.0.1:9", health_service=health_service)
    [(field, message)] = err.value.violations
    assert field == "health_service"
    return message


def test_the_longest_name_asked_is_within_the_bound_or_the_policy_is_refused() -> None:
    longest = "p" * (OTHERS - 1) + "/{endpoint}"
    check = RecoveryCheck("127.0.0.1:9", health_service=longest)
    endpoint = "e" * MAX_ENDPOINT_LENGTH
    assert breaker_name_problem(f"svc/{endpoint}") is None
    asked = check.health_service.replace("{endpoint}", endpoint)
    assert len(asked) == MAX_HEALTH_SERVICE
    RecoveryCheck("127.0.0.1:9", health_service=asked)  # what a check asks is valid too
    message = refused("p" * 80 + "/{endpoint}")  # 91 characters as written, 209 asked
    assert "209" in message and "72" in message
    assert "up to 257" in refused("{endpoint}/{endpoint}")
    refused("{endpoint}" * 1000)
    refused("{endpoint}" * 100_000)
    assert refused("x" * (MAX_HEALTH_SERVICE + 1)) == "at most 200 characters (here 201)"
    assert RecoveryCheck("127.0.0.1:9", health_service="x" * MAX_HEALTH_SERVICE)
    assert "letters" in refused("{Endpoint}")


def test_a_policy_with_too_long_a_health_service_names_the_field() -> None:
    table = {"recovery_check": {"target": "h:1", "health_service": "p" * 80 + "/{endpoint}"}}
    with pytest.raises(ConfigurationError) as err:
        policy_from_mapping(table, service="llm")
    assert [field for field, _ in err.value.violations] == ["recovery_check.health_service"]


@pytest.mark.parametrize("health_service", ["p" * 80 + "/{endpoint}", "{endpoint}" * 1000])
def test_put_policy_refuses_a_health_service_too_long_once_endpoints_are_in_it(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc], health_service: str
) -> None:
    proc, address = procs.control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    check = policy_pb2.RecoveryCheckPolicy(target="127.0.0.1:9", health_service=health_service)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ControlPlaneServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.PutPolicy(
                pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service="svc", recovery_check=check)),
                timeout=30,
            )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "recovery_check.health_service" in (err.value.details() or "")


async def test_a_check_whose_asking_raises_is_logged_once_not_at_each_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    check = RecoveryCheck("127.0.0.1:9", interval_secs=0.02)
    policy = ServicePolicy("llm", failure_threshold=2, recovery_check=check)
    breakers = FleetBreakers(lambda name: policy, clock=lambda: now[0], wall=lambda: 1.7e9)

    async def ask(check: RecoveryCheck) -> str:
        raise RuntimeError("broken")

    checks = RecoveryChecks(breakers, lambda: True, ask=ask, clock=lambda: now[0])
    breakers.record("a", pb.OutcomeSummary(service="llm", failures=2, trailing_failures=2))
    caplog.set_level(logging.ERROR, logger="mission_control.server.recovery_checks")
    for _ in range(20):
        assert checks.start_due(now[0]) == 1
        for _ in range(5):
            await asyncio.sleep(0)
        now[0] += 0.021
    assert checks.answers["error"] == 20
    assert len([r for r in caplog.records if r.exc_info]) == 1
    assert breakers.get("llm").state is BreakerState.OPEN
