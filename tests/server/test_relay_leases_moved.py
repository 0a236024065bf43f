"""Agents behind a follower, on an injected clock: one that moves to another replica is
counted once (the follower drops what it kept for it), and what a restarted follower's old
process may have let its agents spend stays aside at the leader until their horizon (I4)."""

from __future__ import annotations

import pytest

from .test_capacity import HORIZON, RESOURCE, UNITS, Leader
from .test_relay_leases import Follower

LIMIT = ("shared", RESOURCE)


def test_a_kept_agent_connected_to_another_replica_is_no_longer_kept() -> None:
    leader = Leader(5000.0)
    follower = Follower(leader)
    there: set[tuple[str, str]] = set()
    follower.leases.elsewhere = lambda: there
    follower.agent("a@1", safe_units=10.0)
    follower.agent("b@1", safe_units=10.0)
    follower.leases.agent_left("a@1", "s-a")
    follower.leases.agent_left("b@1", "s-b")
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert demand.agents == 2
    there |= {("a", "s-a"), ("b", "another process")}  # a moved; b's id has another process there
    assert follower.leases.dirty
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert (demand.agents, demand.safe_units) == (1, pytest.approx(10.0))
    assert list(follower.leases.kept[LIMIT]) == ["b@1"]


def test_a_restarted_followers_agents_cut_off_stay_kept_aside_until_their_horizon() -> None:
    leader = Leader(5000.0)
    follower = Follower(leader)
    leader.report("direct")
    follower.agent("q", safe_units=0.0)
    follower.agent("w", safe_units=0.0)
    follower.run(5002.0)
    q_share, w_share = follower.got["q"], follower.got["w"]
    follower.agent("q", safe_units=q_share)
    follower.agent("w", safe_units=w_share)
    follower.leases.agent_left("q")  # q cut off, kept by the follower
    follower.run(5003.0)
    # the follower restarts: its new process knows w (back) and not q
    leader.leaser.relay_restarted("f")
    follower.leases = type(follower.leases)(leader.leaser.hold_secs, lambda: leader.now)
    follower.agent("w", safe_units=w_share)
    follower.run(5005.0)
    limit = leader.leaser.limits[LIMIT]
    assert limit.absent["f#before"][0] == pytest.approx(q_share, abs=1e-6)
    assert leader.sent["direct"][-1].units + follower.got["w"] + q_share <= UNITS + 1e-6
    follower.run(5003.0 + HORIZON + 2.0)  # past q's horizon: its part is split again
    assert "f#before" not in limit.absent
    assert leader.sent["direct"][-1].units + follower.got["w"] == pytest.approx(UNITS, abs=1)
