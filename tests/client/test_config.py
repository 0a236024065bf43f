"""Policies and the seed's configuration file: defaults, validation of every field, round trips."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from mission_control.client.config import (
    config_from_proto,
    config_to_proto,
    config_to_toml,
    load_config,
    load_config_file,
    policy_from_json,
    policy_from_proto,
    policy_to_json,
    validate_configuration,
)
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import Backoff, ServicePolicy, default_policy
from mission_control.resilience.v1 import policy_pb2

SEED_FILE = Path(__file__).resolve().parents[2] / "config" / "error_handling.toml"


def test_seed_file_loads_with_seed_values() -> None:
    config = load_config_file(SEED_FILE)
    llm = config.policy_for("llm_provider")
    assert (llm.timeout_secs, llm.max_retries, llm.failure_threshold, llm.success_threshold) == (
        30,
        3,
        5,
        3,
    )
    assert (llm.wait_duration_secs, llm.rate_limit_requests, llm.rate_limit_window_secs) == (
        60,
        100,
        60,
    )
    assert llm.backoff.initial_secs == 0.1
    storage = config.policy_for("storage_backend")
    assert (storage.timeout_secs, storage.max_retries, storage.failure_threshold) == (10, 2, 3)
    assert (storage.success_threshold, storage.backoff.initial_secs) == (2, 0.05)
    comms = config.policy_for("agent_communication")
    assert (comms.failure_threshold, comms.success_threshold, comms.wait_duration_secs) == (
        10,
        5,
        15,
    )
    assert comms.backoff.initial_secs == 0.025 and comms.rate_limit_requests == 1000


def test_unknown_service_takes_file_defaults() -> None:
    config = load_config(
        {"default_timeout_secs": 12, "default_max_retries": 1, "circuit_breaker_threshold": 7}
    )
    other = config.policy_for("vector_db")
    assert (other.timeout_secs, other.max_retries, other.failure_threshold) == (12, 1, 7)
    assert other.wait_duration_secs == 60 and other.rate_limit_requests == 100


def test_omitted_fields_take_seed_defaults() -> None:
    config = load_config({"service_specific": {"storage_backend": {"timeout_secs": 4}}})
    policy = config.policy_for("storage_backend")
    assert policy.timeout_secs == 4
    assert policy.success_threshold == 2 and policy.backoff.initial_secs == 0.05


def test_every_problem_is_reported_with_its_path() -> None:
    data = {
        "default_timeout_secs": 0,
        "mystery": True,
        "service_specific": {
            "llm_provider": {
                "timeout_secs": -1,
                "max_retries": "three",
                "failure_threshold": 0,
                "rate_limit_window_secs": 0,
                "colour": "red",
                "backoff": {"initial_backoff_secs": 0, "jitter": 3},
                "retryable_codes": ["UNAVAILABLE", "NOPE"],
                "fallbacks": ["llm_provider"],
            },
            "storage_backend": {"success_threshold": 0, "wait_duration_secs": "soon"},
        },
    }
    problems = {(e.field, e.message) for e in validate_configuration(data)}
    p = "service_specific.llm_provider."
    s = "service_specific.storage_backend."
    assert problems == {
        ("default_timeout_secs", "must be > 0"),
        ("mystery", "unknown key"),
        (f"{p}timeout_secs", "must be > 0"),
        (f"{p}max_retries", "must be an integer"),
        (f"{p}failure_threshold", "must be > 0"),
        (f"{p}rate_limit_window_secs", "must be > 0"),
        (f"{p}colour", "unknown key"),
        (f"{p}backoff.initial_backoff_secs", "must be > 0"),
        (f"{p}backoff.jitter", "must be <= 1"),
        (f"{p}retryable_codes[1]", "not a gRPC status code name (e.g. UNAVAILABLE)"),
        (f"{p}fallbacks[0]", "a service cannot be its own fallback"),
        (f"{s}success_threshold", "must be > 0"),
        (f"{s}wait_duration_secs", "must be a number"),
    }
    with pytest.raises(ConfigurationError) as caught:
        load_config(data)
    assert len(caught.value.violations) == len(problems)


def test_valid_config_has_no_problems() -> None:
    assert validate_configuration(tomllib.loads(SEED_FILE.read_text())) == []


def test_policy_construction_validates() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ServicePolicy(service="x", timeout_secs=0, max_retries=-1)
    assert {f for f, _ in caught.value.violations} == {"timeout_secs", "max_retries"}
    policy = default_policy("llm_provider")
    with pytest.raises(ConfigurationError):
        policy.replace(failure_threshold=0)
    assert policy.replace(failure_threshold=9).failure_threshold == 9
    with pytest.raises(ConfigurationError):
        Backoff(initial_secs=2, max_secs=1)


def test_toml_round_trip_is_exact() -> None:
    config = load_config(
        {
            "service_specific": {
                "llm_provider": {
                    "max_concurrent": 4,
                    "fallbacks": ["llm_backup"],
                    "failure_rate": {"threshold": 0.5, "minimum_calls": 10, "window_secs": 30},
                    "quotas": [{"resource": "llm_tokens", "limit": 90000, "window_secs": 60}],
                },
                "odd.name": {"timeout_secs": 1.5},
            }
        }
    )
    text = config_to_toml(config)
    assert load_config(tomllib.loads(text)) == config
    assert config_from_proto(config_to_proto(config)) == config


def test_policy_json_round_trip_and_garbage() -> None:
    policy = default_policy("storage_backend", max_concurrent=3)
    assert policy_from_json(policy_to_json(policy), service="storage_backend") == policy
    with pytest.raises(ConfigurationError):
        policy_from_json("{not json", service="x")
    for not_an_object in ("[]", b" []", "null"):  # protobuf's own parser takes `[]` as an empty policy
        with pytest.raises(ConfigurationError):
            policy_from_json(not_an_object, service="x")
    with pytest.raises(ConfigurationError) as caught:
        policy_from_json('{"timeout_secs": -5}', service="x")
    assert caught.value.violations == (("timeout_secs", "must be > 0"),)
    with pytest.raises(ConfigurationError):
        policy_from_json(policy_to_json(policy), service="another")


def test_bad_toml_file_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("default_timeout_secs = = 3\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config_file(bad)
    assert "not valid TOML" in caught.value.message


def test_a_policy_that_clears_its_preset_quotas_keeps_none_through_proto_and_json() -> None:
    """An empty repeated field is "not set" in a message, so a cleared `quotas = []` came
    back as the service's preset quotas (llm_tokens) once stored or sent."""
    config = load_config({"service_specific": {"llm_provider": {"quotas": []}}})
    cleared = config.service_specific["llm_provider"]
    assert cleared.quotas == () and default_policy("llm_provider").quotas  # the preset has some
    assert config_from_proto(config_to_proto(config)) == config
    assert policy_from_json(policy_to_json(cleared), service="llm_provider").quotas == ()
    preset = load_config({"service_specific": {"llm_provider": {}}}).service_specific["llm_provider"]
    assert policy_from_json(policy_to_json(preset), service="llm_provider") == preset


def test_a_message_that_clears_quotas_and_lists_some_is_refused_with_every_bad_field() -> None:
    message = policy_pb2.ServicePolicy(service="llm_provider", no_quotas=True, timeout_secs=-1)
    message.quotas.add(resource="llm_tokens", limit=5, window_secs=1)
    with pytest.raises(ConfigurationError) as err:
        policy_from_proto(message)
    assert {field for field, _ in err.value.violations} == {"no_quotas", "timeout_secs"}
