"""The one decision both spools (sync and asyncio) make about a replayed write."""

from __future__ import annotations

import pytest
from mission_control.client.spool_common import replay_outcome


def failed_service(exc: Exception) -> bool:
    return isinstance(exc, ConnectionError)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "replayed"),
        (TypeError("save() takes 1 positional argument but 2 were given"), "held"),
        (ConnectionRefusedError("storage is down"), None),  # tried again later
        (ValueError("k1 can never be stored"), "dropped"),
    ],
)
def test_a_replay_is_made_held_retried_or_dropped(error: Exception | None, outcome: str | None) -> None:
    assert replay_outcome(error, failed_service) == outcome


def test_a_type_error_is_held_even_when_the_policy_counts_it_as_a_failure_of_the_service() -> None:
    assert replay_outcome(TypeError("bad arguments"), lambda _: True) == "held"
