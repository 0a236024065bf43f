"""Protobuf messages as plain JSON values, for people and pages rather than for protobuf.

Protobuf's JSON mapping writes 64-bit integers as strings (a page or a script then compares
them as text) and leaves zero values out; here every field is present and numbers are numbers.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

_INT64 = {
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
}  # fmt: skip


def json_values(message: Any) -> Any:
    """``message`` as JSON values: every field, zeros included, 64-bit integers as numbers."""
    plain = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(message.DESCRIPTOR, plain)


def _numbers(descriptor: Any, plain: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        value = plain.get(field.name)
        if value is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type in _INT64:
                plain[field.name] = {k: int(v) for k, v in value.items()}
        elif field.type in _INT64:
            plain[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.full_name.startswith("google."):
            for item in value if isinstance(value, list) else [value]:
                _numbers(field.message_type, item)
    return plain
