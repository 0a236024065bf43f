"""Fuzzing: generated configurations through validation, and malformed or oversized messages
against a running control plane. ``MC_FUZZ_EXAMPLES`` sets the count (``make soak``: 10,000)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import tomllib
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mission_control.client.config import (
    config_from_proto,
    config_to_proto,
    config_to_toml,
    load_config,
    validate_configuration,
)
from mission_control.client.errors import ConfigurationError
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.fleet_check import fleet_still_works
from tests.support.procs import Proc, control_plane

EXAMPLES = int(os.environ.get("MC_FUZZ_EXAMPLES", "600"))

numbers = st.one_of(
    st.integers(-5, 200),
    st.floats(-1e3, 1e6, allow_nan=False),
    st.sampled_from([0, 0.0, -1, 1e300, math.inf, -math.inf, math.nan, 2**70]),
)
values = st.one_of(numbers, st.booleans(), st.text(max_size=8), st.lists(st.integers(), max_size=2))
names = st.one_of(
    st.sampled_from(["llm_provider", "storage_backend", "agent_communication", "vector-db", "x.y"]),
    st.text(min_size=0, max_size=12),
)
policy_keys = st.sampled_from(
    [
        "timeout_secs",
        "max_retries",
        "failure_threshold",
        "success_threshold",
        "wait_duration_secs",
        "rate_limit_requests",
        "rate_limit_window_secs",
        "max_concurrent",
        "colour",
    ]
)
backoff = st.dictionaries(
    st.sampled_from(["initial_backoff_secs", "max_backoff_secs", "multiplier", "jitter", "bogus"]),
    numbers,
    max_size=4,
)
quota = st.fixed_dictionaries({"resource": names, "limit": numbers}, optional={"window_secs": numbers})
policy = st.one_of(
    st.dictionaries(policy_keys, st.one_of(numbers, values), max_size=6),
    st.builds(
        lambda d, b, q, codes: {**d, "backoff": b, "quotas": q, "retryable_codes": codes},
        st.dictionaries(policy_keys, numbers, max_size=5),
        backoff,
        st.lists(quota, max_size=2),
        st.lists(
            st.sampled_from(["UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "SOON"]), max_size=2
        ),
    ),
    values,
)
configs = st.fixed_dictionaries(
    {"service_specific": st.dictionaries(names, policy, max_size=3)},
    optional={
        "default_timeout_secs": numbers,
        "default_max_retries": numbers,
        "circuit_breaker_threshold": numbers,
        "surprise": values,
    },
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_generated_configs_are_rejected_with_fields_or_round_trip(data: dict[str, Any]) -> None:
    problems = validate_configuration(data)
    if problems:
        assert all(p.field and p.message for p in problems)
        try:
            load_config(data)
        except ConfigurationError as err:
            assert len(err.violations) == len(problems)
        else:
            raise AssertionError("validate_configuration and load_config disagree")
        return
    config = load_config(data)
    assert load_config(tomllib.loads(config_to_toml(config))) == config
    assert config_from_proto(config_to_proto(config)) == config


def _mutations(rng: random.Random, seeds: list[bytes], count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            out.append(rng.randbytes(rng.randint(0, 300)))
        elif kind < 0.9:
            base = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                if base:
                    base[rng.randrange(len(base))] = rng.randrange(256)
            out.append(bytes(base))
        else:
            out.append(rng.choice(seeds) * rng.randint(50, 500))  # oversized repeats
    return out


def test_malformed_messages_never_stop_the_control_plane(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    channel = grpc.insecure_channel(address)
    rng = random.Random(7)
    seeds = [
        pb.PutPolicyRequest(
            policy=policy_pb2.ServicePolicy(service="llm_provider", timeout_secs=3)
        ).SerializeToString(),
        pb.SetBreakerStateRequest(
            name="b", state=pb.BREAKER_STATE_FORCED_OPEN, reason="test", create=True
        ).SerializeToString(),
        pb.GetBreakerRequest(name="b").SerializeToString(),
        pb.ImportConfigRequest(
            config=policy_pb2.ErrorHandlingConfig(default_timeout_secs=3)
        ).SerializeToString(),
        pb.ConnectRequest(hello=pb.AgentHello(agent_id="fuzz")).SerializeToString(),
        pb.ConnectRequest(
            outcomes=pb.OutcomeBatch(
                summaries=[pb.OutcomeSummary(service="s", failures=3, trailing_failures=9)]
            )
        ).SerializeToString(),
    ]
    raw = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    unary = [
        channel.unary_unary(f"/mission_control.resilience.v1.ControlPlaneService/{m}", **raw)
        for m in ("PutPolicy", "SetBreakerState", "GetBreaker", "ImportConfig", "GetPolicy", "ValidateConfig")
    ]
    codes: dict[str, int] = {}
    for payload in _mutations(rng, seeds, EXAMPLES):
        method = rng.choice(unary)
        try:
            method(payload, timeout=10)
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as err:
            codes[err.code().name] = codes.get(err.code().name, 0) + 1
            assert err.code() != grpc.StatusCode.UNAVAILABLE, err.details()
    connect = channel.stream_stream("/mission_control.resilience.v1.ControlPlaneService/Connect", **raw)
    for _ in range(max(20, EXAMPLES // 20)):
        frames = [seeds[4], *_mutations(rng, seeds[4:], rng.randint(1, 5))]
        try:
            for _ in connect(iter(frames), timeout=10):
                pass
        except grpc.RpcError as err:
            assert err.code() != grpc.StatusCode.UNAVAILABLE, err.details()
    # still serving everyone
    stub = pb_grpc.ControlPlaneServiceStub(channel)
    stub.ListBreakers(pb.ListBreakersRequest(), timeout=5)
    assert plane.popen.poll() is None
    assert sum(codes.values()) == EXAMPLES


# -- the Connect stream, structure-aware ------------------------------------------------------

u32 = st.one_of(st.integers(0, 12), st.sampled_from([2**32 - 1, 2**31, 2**16]))
u64 = st.one_of(st.integers(0, 50), st.sampled_from([2**64 - 1, 2**63, 2**32]))
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-1.0, 1e308, 0.0]))
services = st.one_of(
    st.sampled_from(["fuzz-a", "fuzz-b", "llm_provider"]),
    st.builds(lambda i: f"fz-{i}", st.integers(0, 10**6)),  # many names
    st.text(max_size=20),
    st.builds(lambda n: "s" * n, st.integers(100, 300)),
)
error_keys = st.one_of(
    st.sampled_from(["LLMProviderUnavailable", "StorageFailure", "other"]),
    st.text(max_size=30),
    st.builds(lambda n: "k" * n, st.integers(100, 20_000)),  # long keys
)
summaries = st.builds(
    pb.OutcomeSummary,
    service=services,
    successes=u32,
    failures=u32,
    trailing_failures=u32,
    errors_by_type=st.dictionaries(error_keys, u32, max_size=6),
    rejected=u32,
    probe_successes=u32,
    probe_failures=u32,
    recovery_attempts=u32,
    recovery_successes=u32,
    probes_released=u32,
    errors_by_operation=st.dictionaries(error_keys, u32, max_size=6),
)
agent_ids = st.one_of(st.sampled_from(["fz-agent-1", "fz-agent-2"]), st.text(max_size=10))
frames = st.one_of(
    st.builds(
        lambda seq, s, d: pb.ConnectRequest(outcomes=pb.OutcomeBatch(sequence=seq, summaries=s, dropped=d)),
        u64,  # sequences out of order, repeated, zero
        st.lists(summaries, max_size=12),
        u64,
    ),
    st.builds(lambda s: pb.ConnectRequest(probe_request=pb.ProbeRequest(service=s)), services),
    st.builds(
        lambda s, w, u, p: pb.ConnectRequest(
            demand=pb.CapacityDemandReport(
                demands=[pb.CapacityDemand(service=s, resource=f"{s}.requests", wanted=w, used=u, period=p)]
            )
        ),
        services,
        doubles,
        doubles,
        u64,
    ),
    st.builds(
        lambda a, s, labels: pb.ConnectRequest(hello=pb.AgentHello(agent_id=a, services=s, labels=labels)),
        agent_ids,
        st.lists(services, max_size=40),
        st.dictionaries(st.text(max_size=8), st.text(max_size=300), max_size=40),
    ),
)
streams = st.tuples(agent_ids, st.lists(services, max_size=5), st.lists(frames, max_size=8))


def test_generated_connect_streams_never_stop_the_fleet(
    etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]
) -> None:
    plane, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(plane)
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.ControlPlaneServiceStub(channel)
    stub.PutPolicy(
        pb.PutPolicyRequest(policy=policy_pb2.ServicePolicy(service="fuzz-a", wait_duration_secs=0.2)),
        timeout=10,
    )
    codes: dict[str, int] = {}

    @settings(max_examples=max(40, EXAMPLES // 4), deadline=None, suppress_health_check=list(HealthCheck))
    @given(streams)
    def one_stream(stream: tuple[str, list[str], list[pb.ConnectRequest]]) -> None:
        agent_id, hello_services, rest = stream
        hello = pb.ConnectRequest(hello=pb.AgentHello(agent_id=agent_id, services=hello_services))
        try:
            for _ in stub.Connect(iter([hello, *rest]), timeout=10):
                pass
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as err:
            codes[err.code().name] = codes.get(err.code().name, 0) + 1
            assert err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), err.details()
            assert err.code() != grpc.StatusCode.UNKNOWN, err.details()

    one_stream()
    assert plane.popen.poll() is None
    assert codes.get("OK", 0) > 0, codes
    asyncio.run(fleet_still_works(address))
