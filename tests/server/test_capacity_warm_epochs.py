"""A new leader's warm-up ends on the count of the last earlier leader only (I4).

Agents back say how many agents shared the limit when they were last leased, and the
epoch of that lease. Two earlier leaders may each have leased other agents: an agent back
with a lease of the older one knows nothing of those the newer one leased, which may
still be spending its leases. Simulated schedule 73 at version 2 (``--active 40``): cp1.1
(epoch …4200) leased agent-3 alone; cp0.2 (…4471) leased agent-0 alone, 3 a period; cp0.3
took over, agent-3 came back first saying "1 agent", and cp0.3 leased it 7 of the 7.5
while agent-0, behind a follower cut off from cp0.3, spent its 3: 43 in a 2 s window
against 37.5.
"""

from __future__ import annotations

import pytest
from mission_control.client.policy import FleetLimits, default_policy

from tests.support.lease_leader import START, TakingLeader

POLICY = default_policy(
    "shared",
    rate_limit_requests=200,
    rate_limit_window_secs=2.0,
    fleet=FleetLimits(rate_limit=True, lease_secs=0.5, unleased_secs=10.0),
)
UNITS = 50.0  # 200 per 2 s, leased per 0.5 s


class Leader(TakingLeader):
    """A leader that just took over (epoch 9), on a clock of its own."""

    def __init__(self, recorded_epoch: int = 0) -> None:
        super().__init__(
            POLICY,
            9,
            wanted=100.0,
            leased_before=True,
            earlier_until=START + 2.0,
            earlier_epoch=recorded_epoch,
        )

    def leased(self, period: int) -> float:
        return sum(lease.units for leases in self.sent.values() for lease in leases if lease.period == period)


def test_an_agent_back_from_an_older_term_does_not_end_the_warm_up_for_the_newer_ones() -> None:
    leader = Leader(recorded_epoch=7)  # (without a record no count ends a warm-up)
    leader.back("a", held_epoch=5, agents_known=1, safe_units=10.0)  # alone, two leaders ago
    leader.back("b", held_epoch=7, agents_known=2, safe_units=10.0)  # one of two, last leader
    leader.run(START + 0.6)
    # b's partner still spends its lease of the last leader: a and b get what they had
    assert leader.leased(round((START + 0.5) * 1000)) == pytest.approx(20.0)
    leader.back("c", held_epoch=7, agents_known=2, safe_units=10.0)  # b's partner is back
    leader.run(START + 1.1)
    assert leader.leased(round((START + 1.0) * 1000)) == pytest.approx(UNITS)


def test_an_agent_back_below_the_recorded_epoch_does_not_end_the_warm_up() -> None:
    leader = Leader(recorded_epoch=7)  # the last leader's record: epoch 7
    leader.back("a", held_epoch=5, agents_known=1, safe_units=0.0)  # alone, two leaders ago
    leader.run(START + 1.1)
    # whoever the last leader leased is not back: a gets what it had, not the limit
    assert leader.leased(round((START + 0.5) * 1000)) == 0.0
    assert leader.leased(round((START + 1.0) * 1000)) == 0.0
    leader.back("b", held_epoch=7, agents_known=1, safe_units=25.0)  # the last leader's one
    leader.run(START + 1.6)
    assert leader.leased(round((START + 1.5) * 1000)) == pytest.approx(UNITS)
