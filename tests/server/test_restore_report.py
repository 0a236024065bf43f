"""What a restore from a backup undid, as the leader says it (field by field)."""

from __future__ import annotations

from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy
from mission_control.server.restore_report import changed_fields, normalized, reverted


def value(service: str, timeout: float) -> bytes:
    return policy_to_json(ServicePolicy(service=service, timeout_secs=timeout)).encode()


def test_an_edit_taken_back_is_said_field_by_field() -> None:
    assert changed_fields(value("s", 7.0), value("s", 3.0)) == ["timeout_secs: 7.0 -> 3.0"]


def test_a_policy_back_in_force_or_gone_is_said_and_an_equal_one_is_not() -> None:
    held = {"kept": value("kept", 5.0), "created": value("created", 4.0)}
    stored = {"kept": value("kept", 5.0), "retired": value("retired", 2.0)}
    found = reverted(held, stored)
    assert sorted(found) == ["created", "retired"]
    assert 'timeout_secs: 4.0 -> "(none)"' in found["created"]
    assert 'timeout_secs: "(none)" -> 2.0' in found["retired"]


def test_a_value_put_by_hand_with_defaults_left_out_is_the_same_policy() -> None:
    by_hand = b'{"service": "s", "timeout_secs": 3}'
    assert normalized("s", by_hand) == value("s", 3.0)
    assert reverted({"s": value("s", 3.0)}, {"s": normalized("s", by_hand)}) == {}
