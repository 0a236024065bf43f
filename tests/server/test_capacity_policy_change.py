"""A fleet limit's policy changed under the leader: what agents cut off may still spend
survives it (I4), on the leader's clock."""

from __future__ import annotations

import pytest
from mission_control.client.policy import FleetLimits, default_policy

from tests.server.test_capacity import HORIZON, UNITS, Leader


def _period(secs: float) -> object:
    return default_policy(
        "shared",
        rate_limit_requests=200,
        rate_limit_window_secs=2.0,
        fleet=FleetLimits(rate_limit=True, lease_secs=secs, unleased_secs=10.0),
    )


@pytest.mark.parametrize("period", [1.0, 0.25])
def test_a_changed_lease_period_keeps_an_agent_cut_off_aside(period: float) -> None:
    leader = Leader(4000.0)  # a fresh fleet: no warm-up
    for holder in ("a", "b"):
        leader.report(holder, agents_known=2, safe_units=UNITS / 2)
    leader.run(4010.6)
    leader.leaser.forget("b")  # its stream broke: it may be alive, spending 25 a 0.5-s period
    leader.run(4011.1)
    assert leader.leased(4011000) == pytest.approx(UNITS / 2)
    # the period changes while b is cut off: b never hears of it and spends its 25 every
    # 0.5 s until its horizon (the code before forgot it, and leased a the whole limit)
    leader.policies = [_period(period)]
    leader.leaser.sync_policies()
    units = 200 * period / 2.0
    # kept aside: b's rate, and at least its whole lease in each period (it may spend
    # one at once)
    aside = max(UNITS / 2, UNITS / 2 * period / 0.5)
    leader.run(4013.6)
    assert leader.sent["a"][-1].units == pytest.approx(units - aside)
    assert leader.leaser.usage()[0].kept_aside == pytest.approx(aside)
    # ... until its horizon, as before the change
    leader.run(4010.6 + HORIZON + 2 * period + 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(units)
