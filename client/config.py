"""The seed's configuration file and the policy wire forms, with every error reported.

Three forms describe the same policies and convert losslessly:

* the seed's TOML file (``config/error_handling.toml``): top-level defaults plus
  ``[service_specific.<name>]`` tables; nested tables ``backoff``, ``retry_budget``,
  ``failure_rate``, ``slow_call`` and ``[[service_specific.<name>.quotas]]`` for our extensions;
* the ``ServicePolicy`` / ``ErrorHandlingConfig`` protobuf messages (and their JSON in etcd);
* the frozen :class:`~mission_control.client.policy.ServicePolicy` values agents enforce.

Parsing (:mod:`.policy_parse` for one policy) collects **every** problem with its field
path before failing, and unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from mission_control.resilience.v1 import policy_pb2

from .errors import ConfigurationError
from .policy import SEED_PRESETS, ServicePolicy, _Checks
from .policy_parse import (
    _BACKOFF,
    _BOOLS,
    _BUDGET,
    _FLEET,
    _HEDGING,
    _LISTS,
    _QUOTA,
    _RATE,
    _RECOVERY_CHECK,
    _SCALARS,
    _SLOW,
    _TOP_KEYS,
    MAX_CONFIG_SERVICES,
    MAX_POLICY_BYTES,
    Violations,
    _key_shown,
    _policy,
    _table,
    _unknown,
    policy_from_mapping,
)

__all__ = [
    "ErrorHandlingConfig",
    "config_from_proto",
    "config_to_proto",
    "config_to_toml",
    "load_config",
    "load_config_file",
    "policy_from_json",
    "policy_from_mapping",
    "policy_from_proto",
    "policy_to_json",
    "policy_to_mapping",
    "policy_to_proto",
    "validate_configuration",
]


def policy_to_mapping(policy: ServicePolicy, *, with_service: bool = True) -> dict[str, Any]:
    """Every field of a policy as plain values, in the TOML/JSON layout."""
    out: dict[str, Any] = {"service": policy.service} if with_service else {}
    for key in _SCALARS:
        out[key] = getattr(policy, key)
    for key in _LISTS:
        if key != "reporters" or policy.reporters:  # who may report: shown only when restricted
            out[key] = list(getattr(policy, key))
    for key in _BOOLS:
        out[key] = getattr(policy, key)
    out["backoff"] = {key: getattr(policy.backoff, attr) for key, attr in _BACKOFF.items()}
    out["retry_budget"] = {k: getattr(policy.retry_budget, k) for k in _BUDGET}
    if policy.failure_rate is not None:
        out["failure_rate"] = {k: getattr(policy.failure_rate, k) for k in _RATE}
    if policy.slow_call is not None:
        out["slow_call"] = {k: getattr(policy.slow_call, k) for k in _SLOW}
    if policy.hedging is not None:
        out["hedging"] = {k: getattr(policy.hedging, k) for k in _HEDGING}
    if policy.recovery_check is not None:
        out["recovery_check"] = {k: getattr(policy.recovery_check, k) for k in _RECOVERY_CHECK}
    out["quotas"] = [{k: getattr(q, k) for k in _QUOTA} for q in policy.quotas]
    if policy.fleet is not None:
        fleet = {k: getattr(policy.fleet, k) for k in _FLEET}
        fleet["quotas"] = list(policy.fleet.quotas)
        out["fleet"] = {k: v for k, v in fleet.items() if v is not None}
    return out


def _message_to_mapping(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if isinstance(message, policy_pb2.ServicePolicy) and fd.name == "no_quotas":
            if message.quotas:  # contradicts itself: refused as a bad field
                out["no_quotas"] = value
            else:
                out["quotas"] = []  # cleared, not left to the preset (an empty list is not set)
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = {k: _message_to_mapping(v) for k, v in value.items()}
        elif fd.message_type is not None and fd.is_repeated:
            out[fd.name] = [_message_to_mapping(v) for v in value]
        elif fd.message_type is not None:
            out[fd.name] = _message_to_mapping(value)
        elif fd.is_repeated:
            out[fd.name] = list(value)
        else:
            out[fd.name] = value
    return out


def policy_from_proto(
    message: policy_pb2.ServicePolicy, *, path: str = "", defaults: Mapping[str, Any] | None = None
) -> ServicePolicy:
    """A policy from its message; unset fields take the defaults. Raises ConfigurationError
    (also when the message is larger than ``MAX_POLICY_BYTES``, with every other problem)."""
    size = message.ByteSize()
    too_big = (
        [(f"{path}policy", f"is {size} bytes; at most {MAX_POLICY_BYTES}")] if size > MAX_POLICY_BYTES else []
    )
    try:
        policy = policy_from_mapping(_message_to_mapping(message), path=path, defaults=defaults)
    except ConfigurationError as err:
        raise ConfigurationError.from_violations([*too_big, *err.violations]) from None
    if too_big:
        raise ConfigurationError.from_violations(too_big)
    return policy


def policy_to_proto(policy: ServicePolicy) -> policy_pb2.ServicePolicy:
    """The complete message for a policy (every field set)."""
    data = policy_to_mapping(policy)
    message = json_format.ParseDict(data, policy_pb2.ServicePolicy())
    message.no_quotas = not policy.quotas
    return message


def policy_to_json(policy: ServicePolicy) -> str:
    """Protobuf JSON with the proto field names: what is stored in etcd."""
    return json_format.MessageToJson(policy_to_proto(policy), preserving_proto_field_name=True, indent=2)


def _where(err: Exception) -> str:
    """Where a stored value failed to parse, never the value (it may hold a secret)."""
    text = str(err)
    found = re.search(r" at ServicePolicy\.([A-Za-z0-9_.\[\]]{1,128}?)\.?$", text)
    if found is None:
        found = re.search(r"Failed to parse ([A-Za-z0-9_.]{1,64}) field", text)
    if found:
        return f"field {found.group(1)} has a value of the wrong type or range"
    found = re.search(r'has no field named "([A-Za-z0-9_]{1,64})"', text)
    if found:
        return f"unknown field {found.group(1)}"
    found = re.search(r"line (\d+) column (\d+)", text)
    if found:
        return f"malformed JSON at line {found.group(1)} column {found.group(2)}"
    return "malformed value"


def policy_from_json(text: str | bytes, *, service: str | None = None) -> ServicePolicy:
    """A policy from protobuf JSON (an etcd value). Raises ConfigurationError."""
    message = policy_pb2.ServicePolicy()
    if text.lstrip()[:1] not in ("{", b"{"):  # protobuf's parser takes `[]` for an empty message
        raise ConfigurationError("policy", "not a valid ServicePolicy JSON: not an object")
    try:
        json_format.Parse(text, message)
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as err:
        raise ConfigurationError("policy", f"not a valid ServicePolicy JSON: {_where(err)}") from None
    if service is not None and not message.service:
        message.service = service
    if service is not None and message.service != service:
        raise ConfigurationError("service", "does not match the service of its key")
    return policy_from_proto(message)


@dataclass(frozen=True)
class ErrorHandlingConfig:
    """The seed's ``ErrorHandlingConfig``: defaults and one policy per service."""

    default_timeout_secs: float = 30.0
    default_max_retries: int = 3
    circuit_breaker_threshold: int = 5
    service_specific: Mapping[str, ServicePolicy] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Field values a service not in the file gets (beyond ``ServiceConfig``'s)."""
        return {
            "timeout_secs": self.default_timeout_secs,
            "max_retries": self.default_max_retries,
            "failure_threshold": self.circuit_breaker_threshold,
        }

    def policy_for(self, service: str) -> ServicePolicy:
        """The service's policy, or the defaults when the config does not name it."""
        found = self.service_specific.get(service)
        if found is not None:
            return found
        return policy_from_mapping({}, service=service, defaults=self._top_defaults_for(service))

    def _top_defaults_for(self, service: str) -> dict[str, Any]:
        # The seed's presets win for the three services it names; elsewhere the file's
        # top-level defaults apply.
        return {} if service in SEED_PRESETS else self.defaults()


def load_config(data: Mapping[str, Any]) -> ErrorHandlingConfig:
    """A config from the seed's TOML layout (already parsed).

    Raises:
        ConfigurationError: naming every problem, e.g.
            ``service_specific.llm_provider.timeout_secs: must be > 0``.
    """
    bad: Violations = []
    config = _config(data, bad)
    if bad or config is None:
        raise ConfigurationError.from_violations(bad or [("config", "invalid")])
    return config


def _config(data: Any, bad: Violations) -> ErrorHandlingConfig | None:
    table = _table(data, "config", bad)
    if table is None:
        return None
    _unknown(table, _TOP_KEYS, "", bad)
    top: dict[str, Any] = {}
    checks = _Checks()
    if "default_timeout_secs" in table:
        checks.number("default_timeout_secs", table["default_timeout_secs"], low=0, high=86400, strict=True)
    if "default_max_retries" in table:
        checks.integer("default_max_retries", table["default_max_retries"], low=0, high=100)
    if "circuit_breaker_threshold" in table:
        checks.integer("circuit_breaker_threshold", table["circuit_breaker_threshold"], low=1, high=1_000_000)
    bad.extend(checks.found)
    failed = {field for field, _ in checks.found}
    for key in ("default_timeout_secs", "default_max_retries", "circuit_breaker_threshold"):
        if key in table and key not in failed:
            top[key] = table[key]
    base = ErrorHandlingConfig(**top)
    services: dict[str, ServicePolicy] = {}
    specific = table.get("service_specific", {})
    if _table(specific, "service_specific", bad) is not None:
        if len(specific) > MAX_CONFIG_SERVICES:
            bad.append(("service_specific", f"at most {MAX_CONFIG_SERVICES} services (has {len(specific)})"))
            return None
        for name, entry in specific.items():
            path = f"service_specific.{_key_shown(name)}."
            defaults = base._top_defaults_for(name)
            policy = _policy(entry, name, path, defaults, bad)
            if policy is not None:
                services[name] = policy
    return ErrorHandlingConfig(**top, service_specific=services)


def load_config_file(path: str | Path) -> ErrorHandlingConfig:
    """Read and validate a TOML file. Raises ConfigurationError (also for bad TOML)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigurationError(str(path), f"cannot read file: {err.strerror or err}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigurationError(str(path), f"not valid TOML: {err}") from err
    return load_config(data)


def validate_configuration(
    data: Mapping[str, Any] | ErrorHandlingConfig,
) -> list[ConfigurationError]:
    """Every problem in a configuration, one ``ConfigurationError`` each (the seed's
    Validation Pattern). Empty when the configuration is valid."""
    if isinstance(data, ErrorHandlingConfig):
        data = config_to_mapping(data)
    bad: Violations = []
    _config(data, bad)
    return [ConfigurationError(f, m) for f, m in bad]


def config_to_mapping(config: ErrorHandlingConfig) -> dict[str, Any]:
    return {
        "default_timeout_secs": config.default_timeout_secs,
        "default_max_retries": config.default_max_retries,
        "circuit_breaker_threshold": config.circuit_breaker_threshold,
        "service_specific": {
            name: policy_to_mapping(p, with_service=False)
            for name, p in sorted(config.service_specific.items())
        },
    }


def config_to_proto(config: ErrorHandlingConfig) -> policy_pb2.ErrorHandlingConfig:
    message = policy_pb2.ErrorHandlingConfig(
        default_timeout_secs=config.default_timeout_secs,
        default_max_retries=config.default_max_retries,
        circuit_breaker_threshold=config.circuit_breaker_threshold,
    )
    for name, policy in config.service_specific.items():
        message.service_specific[name].CopyFrom(policy_to_proto(policy))
    return message


def config_from_proto(message: policy_pb2.ErrorHandlingConfig) -> ErrorHandlingConfig:
    """Raises ConfigurationError naming every problem."""
    return load_config(_message_to_mapping(message))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(name: str) -> str:
    bare = name and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in name)
    return name if bare else _toml_value(name)


def config_to_toml(config: ErrorHandlingConfig) -> str:
    """The config in the seed's TOML layout; :func:`load_config` reads it back equal."""
    data = config_to_mapping(config)
    lines = [f"{k} = {_toml_value(data[k])}" for k in sorted(_TOP_KEYS - {"service_specific"})]
    for service, policy in data["service_specific"].items():
        name = _toml_key(service)
        lines += ["", f"[service_specific.{name}]"]
        lines += [
            f"{k} = {_toml_value(v)}" for k, v in policy.items() if not isinstance(v, dict) and k != "quotas"
        ]
        if not policy["quotas"]:
            lines.append("quotas = []")  # no quotas, not the defaults' (omitting the key means those)
        for sub in (
            "backoff",
            "retry_budget",
            "failure_rate",
            "slow_call",
            "fleet",
            "hedging",
            "recovery_check",
        ):
            if sub in policy:
                lines += ["", f"[service_specific.{name}.{sub}]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in policy[sub].items()]
        for quota in policy["quotas"]:
            lines += ["", f"[[service_specific.{name}.quotas]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in quota.items()]
    return "\n".join(lines) + "\n"
