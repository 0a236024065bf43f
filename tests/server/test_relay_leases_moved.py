"""Agents behind a follower, on an injected clock: one that moves to another replica is
counted once (the follower drops what it kept for it once the leader counts it elsewhere),
and what a restarted follower's old process may have let its agents spend stays aside at
the leader until their horizon (I4)."""

from __future__ import annotations

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .test_capacity import HORIZON, RESOURCE, UNITS, Leader
from .test_relay_leases import Follower

LIMIT = ("shared", RESOURCE)


def test_a_kept_agent_the_leader_counts_elsewhere_is_no_longer_kept() -> None:
    leader = Leader(5000.0)
    follower = Follower(leader)
    follower.agent("a@1", safe_units=10.0)
    follower.agent("b@1", safe_units=10.0)
    follower.leases.agent_left("a@1")
    follower.leases.agent_left("b@1")
    (demand,) = follower.leases.report().demand.demands  # type: ignore[union-attr]
    assert demand.agents == 2
    # a moved: the leader counts it through another holder now (b@1's id has another
    # process there, not this one: still kept)
    lease = pb.CapacityLease(service="shared", resource=RESOURCE, units=20.0, counted_elsewhere=["a@1"])
    lease.period_length.FromNanoseconds(500_000_000)
    follower.leases.split(lease)
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
