"""Fixed-seed regressions fail again with their defect put back: each replays, at the
schedule version it was picked at, a schedule that still shows the defect it names."""

from __future__ import annotations

import pytest

from .test_known_violations import _replay
from .world import EPOCH_RECORD_SCHEDULES


def _i4(seed: int, active_secs: float) -> list[str]:
    return [v for v in _replay(seed, active_secs).violations if v.startswith("I4:")]


def test_schedule_18_catches_a_follower_that_forgets_an_agent_gone_without_a_goodbye(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before ``server/relay_leases.py`` a follower dropped an agent whose stream ended from
    its demand at once, and the leader leased its units to the others while it spent them
    (``test_known_violations``: schedule 40, 35 in a window against 33.75). Schedule 40 no
    longer shows it with the old rule (it moved before the fixes after a loss of data, on
    the main of 4808a03 already); 18 (version 1, ``--active 10``) does, found again with
    the old rule put back."""
    from mission_control.server.relay_leases import FollowerLeases

    def forgets(self, agent_id):  # type: ignore[no-untyped-def]
        for per_agent in self.demands.values():
            if per_agent.pop(agent_id, None) is not None:
                self._dirty = True

    monkeypatch.setattr(FollowerLeases, "agent_left", forgets)
    assert _i4(18, 10.0)


@pytest.mark.xfail(
    strict=False,
    reason="4097 no longer shows the old rule's 46 (moved on 4808a03 already); no seed re-picked yet",
)
def test_schedule_4097_catches_a_leader_that_knows_the_epoch_record_once_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before ``server/takeover_read.py`` a leader took its view of the epoch record as
    known once its watch had loaded, read or not since its takeover (46 against 45)."""
    from mission_control.server.takeover_read import TakeoverRead

    monkeypatch.setattr(TakeoverRead, "__call__", lambda self: self.loaded())
    assert _i4(4097, 40.0)


def test_schedule_3088_catches_a_relay_link_that_looks_at_the_leader_only_when_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before a link ended once the leader key named another replica, two followers
    relaying to each other passed every batch round until the relay's bound summed them
    without names (``test_known_violations``: 1096 and 3088, counted twice)."""
    from mission_control.server.relay import LeaderRelay

    monkeypatch.setattr(LeaderRelay, "_still_leads", lambda self, address: True)
    violations = _replay(3088, 40.0, EPOCH_RECORD_SCHEDULES).violations
    assert [v for v in violations if v.startswith("I5: twice:")], violations[:3]
