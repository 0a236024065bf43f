"""What really changed between two stored values of a policy, for people to read.

A value written by ``etcdctl put`` may hold only the fields it sets; the others take their
defaults. Two values are compared as the policies they stand for (every field, defaults
filled in), so a field left out that keeps its value is no change, and each value is shown
in one form whatever the JSON held (``90000`` for ``"90000"``, ``20.0`` for a number of
seconds written ``20``). Nested fields are named with dots (``backoff.initial_ms``).

A value that is no valid policy (one refused) cannot be filled in: only the fields it holds
are compared, as written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mission_control.client.config import policy_from_json, policy_to_mapping
from mission_control.client.errors import ConfigurationError

__all__ = ["NO_POLICY", "changed_fields"]

NO_POLICY = "(no policy)"
_INTEGER = re.compile(r"^-?\d+$")


def changed_fields(old: str, new: str, name: str) -> list[tuple[str, str, str]]:
    """``(field, old shown, new shown)`` for every field whose value differs, by name."""
    old_side, new_side = _Side(old, name), _Side(new, name)
    # created or deleted (every field of the side that holds one), or two valid policies
    if not old or not new or (old_side.complete and new_side.complete):
        keys = sorted(set(old_side.fields) | set(new_side.fields))
    else:  # a side that is no valid policy: the fields it holds
        partial = [side for side in (old_side, new_side) if not side.complete]
        keys = sorted({key for side in partial for key in side.fields})
    changed = []
    for key in keys:
        before, after = old_side.show(key), new_side.show(key)
        if before != after:
            changed.append((key, before, after))
    return changed


class _Side:
    """One stored value: its fields flattened, every one when it is a valid policy."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.complete = False
        self.fields: dict[str, Any] = {}
        if not text:
            return
        try:
            mapping: dict[str, Any] = policy_to_mapping(policy_from_json(text, service=name))
            self.complete = True
        except ConfigurationError:
            mapping = _raw(text)
        self.fields = _flat(mapping)
        self.fields.pop("service", None)

    def show(self, key: str) -> str:
        if not self.text:
            return NO_POLICY
        if key not in self.fields:
            return "(unset)"
        value = self.fields[key]
        return json.dumps(value if self.complete else _normal(value), sort_keys=True)


def _raw(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}


def _flat(mapping: dict[str, Any], within: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{within}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _normal(value: Any) -> Any:
    """Protobuf JSON writes 64-bit integers as strings: shown as the numbers they are."""
    if isinstance(value, str) and _INTEGER.match(value):
        return int(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value
