"""Fixed-seed regressions fail again with their defect put back: each replays, at the
schedule version it was picked at, schedules that showed the defect it names.

Which schedule shows a defect depends on the timing of everything else, so a change elsewhere
can hide it from one schedule: each defect is looked for in several (all keep every invariant
without it), and one of them showing it is enough. A defect no schedule shows any more
is shown by a focused test instead: 4097's (a leader taking its view of the epoch record
as known once its watch had loaded) by ``tests/server/test_takeover_read.py``, three of
whose four cases fail with it back; 3088's (a relay link that looked at the leader key only
when answered) by ``tests/server/test_relay_follows_leader.py``; schedule 0's (a term told by
the leader key's revision) by ``tests/server/test_leadership_term.py``."""

from __future__ import annotations

import pytest

from .test_known_violations import _replay


def _i4(seeds: tuple[int, ...], active_secs: float) -> list[str]:
    found = []
    for seed in seeds:
        found += [f"{seed}: {v}" for v in _replay(seed, active_secs).violations if v.startswith("I4:")]
        if found:
            break
    return found


def test_schedule_18_catches_a_follower_that_forgets_an_agent_gone_without_a_goodbye(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before ``server/relay_leases.py`` a follower dropped an agent whose stream ended from
    its demand at once, and the leader leased its units to the others while it spent them
    (``test_known_violations``: schedule 40, 35 in a window against 33.75). Schedule 40 no
    longer shows it with the old rule (its timing moved); 18, 120 and 121 (version 1,
    ``--active 10``) did, found again with the old rule put back."""
    from mission_control.server.relay_leases import FollowerLeases

    def forgets(self, agent_id):  # type: ignore[no-untyped-def]
        for per_agent in self.demands.values():
            if per_agent.pop(agent_id, None) is not None:
                self._dirty = True

    monkeypatch.setattr(FollowerLeases, "agent_left", forgets)
    assert _i4((18, 120, 121, 40), 10.0)
