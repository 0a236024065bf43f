"""The seed's configuration file and the policy wire forms, with every error reported.

Three forms describe the same policies and convert losslessly:

* the seed's TOML file (``config/error_handling.toml``): top-level defaults plus
  ``[service_specific.<name>]`` tables; nested tables ``backoff``, ``retry_budget``,
  ``failure_rate``, ``slow_call`` and ``[[service_specific.<name>.quotas]]`` for our extensions;
* the ``ServicePolicy`` / ``ErrorHandlingConfig`` protobuf messages (and their JSON in etcd);
* the frozen :class:`~mission_control.client.policy.ServicePolicy` values agents enforce.

Parsing collects **every** problem with its field path before failing, and unknown keys
are errors, never silently ignored.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from mission_control.resilience.v1 import policy_pb2

from .errors import ConfigurationError
from .policy import (
    MAX_ERROR_CLASSES,
    MAX_FALLBACKS,
    MAX_QUOTAS,
    MAX_REPORTERS,
    MAX_RETRYABLE_CODES,
    SEED_PRESETS,
    Backoff,
    FailureRate,
    FleetLimits,
    Hedging,
    Quota,
    RecoveryCheck,
    RetryBudget,
    ServicePolicy,
    SlowCall,
    _Checks,
    name_problem,
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

Violations = list[tuple[str, str]]

_SCALARS = (
    "timeout_secs",
    "max_retries",
    "failure_threshold",
    "success_threshold",
    "wait_duration_secs",
    "wait_duration_multiplier",
    "max_wait_duration_secs",
    "rate_limit_requests",
    "rate_limit_window_secs",
    "max_concurrent",
    "max_endpoints",
    "endpoint_idle_secs",
)
_INTEGERS = {
    "max_retries",
    "failure_threshold",
    "success_threshold",
    "rate_limit_requests",
    "max_concurrent",
    "max_endpoints",
}
_LISTS = ("retryable_codes", "fallbacks", "record_errors", "ignore_errors", "reporters")
#: Entries of a list beyond its bound are not looked at: one violation says how many.
_LIST_BOUNDS = {
    "retryable_codes": MAX_RETRYABLE_CODES,
    "fallbacks": MAX_FALLBACKS,
    "record_errors": MAX_ERROR_CLASSES,
    "ignore_errors": MAX_ERROR_CLASSES,
    "reporters": MAX_REPORTERS,
}
#: Unknown keys named one by one in an error; beyond, they are counted.
MAX_UNKNOWN_SHOWN = 16
#: Most services one config may hold.
MAX_CONFIG_SERVICES = 1000
#: The largest stored or sent policy: every list and name bounded fits well within.
MAX_POLICY_BYTES = 256 * 1024
_BOOLS = ("idempotent", "fleet_retry_budget")
_BACKOFF = {
    "initial_backoff_secs": "initial_secs",
    "max_backoff_secs": "max_secs",
    "multiplier": "multiplier",
    "jitter": "jitter",
}
_BUDGET = ("ratio", "min_retries_per_second", "window_secs")
_RATE = ("threshold", "minimum_calls", "window_secs")
_SLOW = ("duration_threshold_secs", "rate_threshold", "minimum_calls", "window_secs")
_QUOTA = ("resource", "limit", "window_secs")
_FLEET = ("rate_limit", "quotas", "lease_secs", "safe_share", "unleased_secs")
_RECOVERY_CHECK = ("target", "health_service", "interval_secs", "timeout_secs")
_HEDGING = ("max_attempts", "delay_secs", "delay_percentile", "min_delay_secs", "max_extra_ratio")
_POLICY_KEYS = {
    "service",
    *_SCALARS,
    *_LISTS,
    *_BOOLS,
    "backoff",
    "retry_budget",
    "failure_rate",
    "slow_call",
    "quotas",
    "fleet",
    "hedging",
    "recovery_check",
}
_TOP_KEYS = {
    "default_timeout_secs",
    "default_max_retries",
    "circuit_breaker_threshold",
    "service_specific",
}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _coerce(name: str, value: Any, path: str, bad: Violations) -> Any:
    """Type-check a scalar; integers where integers belong, numbers where numbers do."""
    if name in _INTEGERS:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            bad.append((path, "must be an integer"))
            return None
        return value
    if not _is_number(value):
        bad.append((path, "must be a number"))
        return None
    return value


def _table(data: Any, path: str, bad: Violations) -> Mapping[str, Any] | None:
    if isinstance(data, Mapping):
        return data
    bad.append((path.rstrip("."), "must be a table"))
    return None


def _unknown(data: Mapping[str, Any], known: Iterable[str], path: str, bad: Violations) -> None:
    allowed = set(known)
    unknown = [key for key in data if key not in allowed]
    for key in unknown[:MAX_UNKNOWN_SHOWN]:
        bad.append((f"{path}{_key_shown(key)}", "unknown key"))
    if len(unknown) > MAX_UNKNOWN_SHOWN:
        bad.append((path.rstrip(".") or "config", f"{len(unknown) - MAX_UNKNOWN_SHOWN} more unknown keys"))


def _key_shown(key: object) -> str:
    """A key of hostile input as it may appear in a field path: cut, never huge."""
    text = str(key)
    return text if len(text) <= 128 else f"{text[:64]}...({len(text)} characters)"


def _bounded(items: Any, most: int, path: str, bad: Violations) -> Any:
    """The first ``most`` of a list; a violation when there are more."""
    if isinstance(items, list | tuple) and len(items) > most:
        bad.append((path, f"at most {most} entries (has {len(items)})"))
        return items[:most]
    return items


def _build(cls: Any, values: dict[str, Any], path: str, bad: Violations) -> Any:
    """Construct a validated value, moving its violations under ``path``."""
    try:
        return cls(**values)
    except ConfigurationError as err:
        bad.extend((f"{path}{f}", m) for f, m in err.violations)
        return None


def _part(data: Any, path: str, keys: Mapping[str, str], cls: Any, base: Any, bad: Violations) -> Any:
    table = _table(data, path, bad)
    if table is None:
        return base
    _unknown(table, keys, path, bad)
    values = {attr: getattr(base, attr) for attr in keys.values()}
    for key, attr in keys.items():
        if key in table:
            values[attr] = table[key]
    before = len(bad)
    built = _build(cls, values, path, bad)
    if built is None:
        # report under the file's key names, not the attribute names
        reverse = {attr: key for key, attr in keys.items()}
        for i in range(before, len(bad)):
            f, m = bad[i]
            leaf = f[len(path) :]
            bad[i] = (f"{path}{reverse.get(leaf, leaf)}", m)
        return base
    return built


def policy_from_mapping(
    data: Mapping[str, Any],
    *,
    service: str | None = None,
    path: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> ServicePolicy:
    """A policy from a TOML table or proto-JSON-like mapping.

    Fields the mapping omits take, in order: ``defaults``, the seed's preset for the
    service, the ``ServiceConfig`` defaults.

    Raises:
        ConfigurationError: listing every problem, with ``path`` before each field.
    """
    bad: Violations = []
    policy = _policy(data, service, path, defaults or {}, bad)
    if bad or policy is None:
        raise ConfigurationError.from_violations(bad or [(f"{path}service", "invalid")])
    return policy


def _policy(
    data: Any, service: str | None, path: str, defaults: Mapping[str, Any], bad: Violations
) -> ServicePolicy | None:
    table = _table(data, path, bad)
    if table is None:
        return None
    before = len(bad)
    _unknown(table, _POLICY_KEYS | {"no_quotas"}, path, bad)
    if "no_quotas" in table:  # only from a message that also lists quotas (see _message_to_mapping)
        bad.append((f"{path}no_quotas", "is set while quotas are listed: a policy with no quotas lists none"))
    name = table.get("service", service)
    if service is not None and "service" in table and table["service"] != service:
        bad.append((f"{path}service", f"must match the table name {service!r}"))
    problem = name_problem(name)
    if problem:
        bad.append((f"{path}service", problem))
        name = "invalid"
    values: dict[str, Any] = dict(SEED_PRESETS.get(name, {}))
    values.update(defaults)
    for key in _SCALARS:
        if key in table:
            value = _coerce(key, table[key], f"{path}{key}", bad)
            if value is not None:
                values[key] = value
    for key in _BOOLS:
        if key in table:
            if isinstance(table[key], bool):
                values[key] = table[key]
            else:
                bad.append((f"{path}{key}", "must be true or false"))
    for key in _LISTS:
        if key in table:
            items = _bounded(table[key], _LIST_BOUNDS[key], f"{path}{key}", bad)
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                bad.append((f"{path}{key}", "must be a list of strings"))
            elif items:  # empty means "the default" (protobuf cannot tell empty from unset)
                values[key] = tuple(items)
    base_backoff = values.get("backoff", Backoff())
    if "backoff" in table:
        values["backoff"] = _part(table["backoff"], f"{path}backoff.", _BACKOFF, Backoff, base_backoff, bad)
    if "retry_budget" in table:
        keys = {k: k for k in _BUDGET}
        values["retry_budget"] = _part(
            table["retry_budget"], f"{path}retry_budget.", keys, RetryBudget, RetryBudget(), bad
        )
    if "failure_rate" in table:
        keys = {k: k for k in _RATE}
        values["failure_rate"] = _part(
            table["failure_rate"], f"{path}failure_rate.", keys, FailureRate, FailureRate(), bad
        )
    if "slow_call" in table:
        keys = {k: k for k in _SLOW}
        values["slow_call"] = _part(table["slow_call"], f"{path}slow_call.", keys, SlowCall, SlowCall(), bad)
    if "hedging" in table:
        keys = {k: k for k in _HEDGING}
        values["hedging"] = _part(table["hedging"], f"{path}hedging.", keys, Hedging, Hedging(), bad)
    if "recovery_check" in table:
        values["recovery_check"] = _recovery_check(table["recovery_check"], f"{path}recovery_check.", bad)
    if "quotas" in table:
        values["quotas"] = _quotas(table["quotas"], f"{path}quotas", bad)
    if "fleet" in table:
        values["fleet"] = _fleet(table["fleet"], f"{path}fleet.", bad)
    # Built even after earlier problems, so that every field is checked in one pass.
    policy = _build(ServicePolicy, {"service": name, **values}, path, bad)
    return policy if len(bad) == before else None


def _quotas(items: Any, path: str, bad: Violations) -> tuple[Quota, ...]:
    if not isinstance(items, list | tuple):
        bad.append((path, "must be a list of tables"))
        return ()
    items = _bounded(items, MAX_QUOTAS, path, bad)
    out = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]."
        table = _table(item, where, bad)
        if table is None:
            continue
        _unknown(table, _QUOTA, where, bad)
        missing = [k for k in ("resource", "limit") if k not in table]
        for k in missing:
            bad.append((f"{where}{k}", "is required"))
        if missing:
            continue
        values = {k: table[k] for k in _QUOTA if k in table}
        quota = _build(Quota, values, where, bad)
        if quota is not None:
            out.append(quota)
    return tuple(out)


def _fleet(data: Any, path: str, bad: Violations) -> FleetLimits | None:
    table = _table(data, path, bad)
    if table is None:
        return None
    _unknown(table, _FLEET, path, bad)
    values = {k: table[k] for k in _FLEET if k in table}
    if "quotas" in values:
        quotas = values["quotas"]
        if not isinstance(quotas, list | tuple) or not all(isinstance(q, str) for q in quotas):
            bad.append((f"{path}quotas", "must be a list of strings"))
            values.pop("quotas")
    return _build(FleetLimits, values, path, bad)  # type: ignore[no-any-return]


def _recovery_check(data: Any, path: str, bad: Violations) -> RecoveryCheck | None:
    table = _table(data, path, bad)
    if table is None:
        return None
    _unknown(table, _RECOVERY_CHECK, path, bad)
    values = {k: table[k] for k in _RECOVERY_CHECK if k in table}
    values.setdefault("target", "")  # missing: reported by the check with the rest
    return _build(RecoveryCheck, values, path, bad)  # type: ignore[no-any-return]


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
