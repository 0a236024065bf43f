"""A policy from a TOML table or a proto-JSON-like mapping, with every error reported.

The field names of the seed's file and of the protobuf JSON are the same; this module
checks a mapping of them field by field, collecting **every** problem with its path
(unknown keys included) before failing, and builds the frozen
:class:`~mission_control.client.policy.ServicePolicy`. The file and wire forms around it
are :mod:`.config`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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
    name_problem,
)

__all__ = ["MAX_CONFIG_SERVICES", "MAX_POLICY_BYTES", "Violations", "policy_from_mapping"]

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
