"""A probe grant delivered twice (a duplicated message) gives one permit: grants carry an
identity (series, number) and an agent, or a follower handing grants on, takes each once
(injected clock)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.probes import GRANTS_REMEMBERED, GrantsTaken
from mission_control.resilience.v1 import control_plane_pb2 as pb

from tests.client.test_half_open_link_lost import connected_at, decided, grant


def numbered(generation: int, number: int, series: int = 77) -> pb.ProbeGrant:
    message = grant(generation)
    message.number, message.series = number, series
    return message


def test_a_grant_delivered_twice_gives_one_permit() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(numbered(4, 1))
    view.grant(numbered(4, 1))  # the same grant again
    assert [decided(view, clock) for _ in range(3)] == ["fleet", "refused", "refused"]  # old: fleet, fleet


def test_two_grants_give_two_permits() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(numbered(4, 1))
    view.grant(numbered(4, 2))
    assert [decided(view, clock) for _ in range(3)] == ["fleet", "fleet", "refused"]


def test_another_series_with_the_same_number_is_another_grant() -> None:
    """A restarted replica, or a new leader, numbers from 1 again under its own series."""
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(numbered(4, 1, series=77))
    assert decided(view, clock) == "fleet"
    view.grant(numbered(4, 1, series=78))
    assert decided(view, clock) == "fleet"


def test_a_grant_used_then_delivered_again_gives_nothing() -> None:
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(numbered(4, 1))
    assert decided(view, clock) == "fleet"
    view.grant(numbered(4, 1))
    assert decided(view, clock) == "refused"


def test_grants_without_an_identity_are_each_taken() -> None:
    """A control plane that does not number its grants (number 0): as before."""
    view, clock = connected_at(BreakerState.HALF_OPEN)
    view.grant(grant(4))
    view.grant(grant(4))
    assert [decided(view, clock) for _ in range(2)] == ["fleet", "fleet"]


def test_the_identities_remembered_are_bounded() -> None:
    taken = GrantsTaken()
    assert taken.first_time(4, (1, 1))
    for number in range(2, GRANTS_REMEMBERED + 2):
        assert taken.first_time(4, (1, number))
    assert not taken.first_time(4, (1, GRANTS_REMEMBERED + 1))
    assert taken.first_time(4, (1, 1))  # the oldest was forgotten
    assert len(taken._taken) == GRANTS_REMEMBERED
    assert taken.first_time(5, (1, 2))  # the same number in another generation
