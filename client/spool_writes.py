"""A spooled write's identity and record: the id a write carries on its first try and on
every replay (for an upstream that applies each write once), and how its arguments are kept
as a journal record that gives back equal values (one format for the sync and async spools)."""

from __future__ import annotations

import base64
import contextvars
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "WRITE_ID_HEADER",
    "current_write_id",
    "decode_write",
    "encode_write",
    "write_id_metadata",
    "writing",
]

_write_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mission_control_write_id", default=None
)


def current_write_id() -> str | None:
    """The id of the spool-backed write being made (inside the protected function), the
    same on its first try and on every replay: send it to the upstream so it can drop a
    write it has already applied. None outside such a write."""
    return _write_id.get()


#: The gRPC metadata key :func:`write_id_metadata` sends the write's id under.
WRITE_ID_HEADER = "x-write-id"


def write_id_metadata() -> tuple[tuple[str, str], ...]:
    """The write's id as gRPC metadata (``x-write-id``), for an upstream that applies a
    write once per id: ``stub.Put(request, metadata=write_id_metadata())``. Empty outside
    a spool-backed write."""
    write_id = _write_id.get()
    return () if write_id is None else ((WRITE_ID_HEADER, write_id),)


@contextmanager
def writing(write_id: str) -> Iterator[None]:
    """Inside the block, :func:`current_write_id` is ``write_id``."""
    token = _write_id.set(write_id)
    try:
        yield
    finally:
        _write_id.reset(token)


def _to_json(value: Any, where: str, bad: list[str]) -> Any:
    """``value`` as JSON that :func:`_from_json` turns back into an equal value: tuples and
    bytes are tagged, as are dicts with a key that starts with ``$`` (a tag's look)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            bad.append(f"{where} is {value!r} (JSON has no such number)")
        return value
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        items = [_to_json(item, f"{where}[{i}]", bad) for i, item in enumerate(value)]
        return items if isinstance(value, list) else {"$tuple": items}
    if isinstance(value, dict):
        keys = [key for key in value if not isinstance(key, str)]
        if keys:
            bad.append(f"{where} has keys that are not strings ({', '.join(map(repr, keys[:3]))})")
            return None
        pairs = {key: _to_json(item, f"{where}[{key!r}]", bad) for key, item in value.items()}
        if any(key.startswith("$") for key in pairs):
            return {"$dict": [[key, item] for key, item in pairs.items()]}
        return pairs
    bad.append(f"{where} is a {type(value).__name__}")
    return None


def _from_json(value: dict[str, Any]) -> Any:
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "$bytes":
            return base64.b64decode(inner)
        if tag == "$tuple":
            return tuple(inner)
        if tag == "$dict":
            return {key: item for key, item in inner}
    return value


def encode_write(write_id: str, function: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A write as a journal payload; what :func:`decode_write` gives back equals it.

    Raises:
        TypeError: an argument JSON values, bytes and tuples cannot hold (all are named).
    """
    bad: list[str] = []
    record = {
        "id": write_id,
        "fn": function,
        "args": [_to_json(arg, f"args[{i}]", bad) for i, arg in enumerate(args)],
        "kwargs": _to_json(kwargs, "kwargs", bad),
    }
    if bad:
        raise TypeError(
            "a spooled write's arguments must be JSON values or bytes (lists, tuples, dicts "
            f"with string keys of them): {'; '.join(bad)}"
        )
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def decode_write(payload: bytes) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """The write :func:`encode_write` kept: (id, function, args, kwargs).

    Raises:
        ValueError: the payload is not such a write (not JSON, nested too deep to read,
            tags or fields of other types).
    """
    try:
        record = json.loads(payload, object_hook=_from_json)
    except (ValueError, TypeError, RecursionError) as exc:  # a record no encode_write made
        raise ValueError(f"not a spooled write ({type(exc).__name__}): {payload[:80]!r}") from exc
    shapes = {"id": str, "fn": str, "args": list, "kwargs": dict}
    if not isinstance(record, dict) or any(not isinstance(record.get(k), t) for k, t in shapes.items()):
        raise ValueError(f"not a spooled write: {payload[:80]!r}")
    return record["id"], record["fn"], tuple(record["args"]), dict(record["kwargs"])
