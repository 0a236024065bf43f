"""A changed ``fleet.unleased_secs`` (H) keeps I4: an agent never spends unleased longer
than the leader keeps its share aside. On an injected clock, the leader's leases to the one
agent still connected show what it keeps aside for one cut off."""

from __future__ import annotations

import pytest

from tests.server.test_capacity import HORIZON, POLICY, UNITS, Leader, _horizon


def _two_then_b_cut_off() -> Leader:
    leader = Leader(4000.0)  # a fresh fleet: no warm-up
    for holder in ("a", "b"):
        leader.report(holder, agents_known=2, safe_units=UNITS / 2)
    leader.run(4010.6)
    leader.leaser.forget("b")  # its stream broke: alive, it spends its last lease
    return leader


def test_a_raised_horizon_keeps_an_agent_cut_off_before_aside_for_the_new_one() -> None:
    # b saw the raise before the leader did (through another replica) and got a lease: it
    # spends 60 s after that lease began, not 10
    leader = _two_then_b_cut_off()
    leader.run(4012.0)
    leader.policies = [_horizon(60.0)]
    leader.leaser.sync_policies()
    leader.run(4010.6 + HORIZON + 5.0)  # past the old horizon: still aside
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
    leader.run(4010.6 + 60.0 + 1.0 - 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
    leader.run(4010.6 + 60.0 + 1.0 + 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)


def test_a_policy_deleted_and_put_again_keeps_an_agent_cut_off_before_aside() -> None:
    # b never heard of the deletion: it spends its last lease until its horizon
    leader = _two_then_b_cut_off()
    leader.run(4011.0)
    leader.policies = []
    leader.leaser.sync_policies()
    leader.run(4012.0)
    leader.policies = [POLICY]
    leader.leaser.sync_policies()
    leader.report("a", agents_known=2, safe_units=UNITS / 2)  # (a reports every period)
    sent = len(leader.sent["a"])
    leader.run(4013.0)
    assert len(leader.sent["a"]) > sent
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
    leader.run(4010.6 + HORIZON - 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
    leader.run(4010.6 + HORIZON + 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)


def test_a_policy_deleted_and_put_again_with_a_lower_horizon_keeps_the_old_one() -> None:
    leader = _two_then_b_cut_off()
    leader.policies = []
    leader.leaser.sync_policies()
    leader.run(4011.0)
    leader.policies = [_horizon(1.0)]
    leader.leaser.sync_policies()
    leader.report("a", agents_known=2, safe_units=UNITS / 2)
    sent = len(leader.sent["a"])
    leader.run(4010.6 + HORIZON - 0.5)
    assert len(leader.sent["a"]) > sent
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
