"""An agent leased two leaders back is still spending while a third one leads (I4).

Simulated schedule 1150 at ``--active 40`` (period 0.25 s, 3.75 units), on the main it was
found on (04df0f7): cp1.1 leased agent-1 (behind the follower cp0.1) 1 a period; agent-1
was cut off and spent that lease until its horizon. cp1.2 led next, warming up (the
record named cp1.1's epoch), never heard of agent-1, and leased agent-3, a new agent,
nothing a period, announcing "1 agent". cp1.3 led after it; agent-3 came back holding
cp1.2's lease (the record's epoch) of "1 agent", cp1.3 took that for the whole fleet, ended
its warm-up and leased agent-3 3 a period beside agent-1's 1: 34 in a 2 s window against
33.75. The defect of schedule 177: a leader that does not know how many agents the last
earlier leader leased now announces one more than it knows of
(:meth:`~mission_control.server.capacity_aside.LeaderTerm.count_known`), so the leader
after it keeps warming up — here two terms after the lease still spent.
"""

from __future__ import annotations

from mission_control.client.fleet_limits import LeasedBudget
from mission_control.client.policy import FleetLimits, default_policy

from tests.support.lease_leader import START, TakingLeader, earlier

PERIOD = 0.25
POLICY = default_policy(
    "shared",
    rate_limit_requests=30,
    rate_limit_window_secs=2.0,
    fleet=FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=30.0),
)
UNITS = 3.75  # 30 per 2 s, leased per 0.25 s


class Leader(TakingLeader):
    """A leader that took over in ``epoch``, the record naming ``recorded`` (0: a new fleet)."""

    def __init__(self, epoch: int, recorded: int) -> None:
        super().__init__(POLICY, epoch, wanted=8.0, **earlier(recorded))

    def spent(self, unleased: dict[str, float]) -> dict[int, float]:
        """Per period leased: the units leased over every holder, and what each holder of
        ``unleased`` spends without a lease when it has none for that period."""
        periods: dict[int, dict[str, float]] = {}
        for holder, leases in self.sent.items():
            for lease in leases:
                periods.setdefault(lease.period, {})[holder] = lease.units
        return {
            p: sum(leased.values()) + sum(u for h, u in unleased.items() if h not in leased)
            for p, leased in periods.items()
        }


def test_a_lease_two_terms_back_is_kept_aside_while_the_third_leader_warms_up() -> None:
    first = Leader(epoch=5, recorded=0)  # a new fleet: x and z leased at once
    first.back("x", held_epoch=0, agents_known=0, safe_units=0.0)
    first.back("z", held_epoch=0, agents_known=0, safe_units=0.0)
    first.run(START + 1.1)
    # x keeps what it was leased, as an agent does, and is then cut off from every replica
    x = LeasedBudget(UNITS, PERIOD, None, 0.0, unleased_secs=30.0)
    for lease in first.sent["x"]:
        x.apply(lease.period, lease.units, lease.period / 1000, PERIOD, lease.agents, UNITS, 5)
    spent_by_x = x.safe_units()  # a period, until its horizon
    assert spent_by_x >= 1.0

    second = Leader(epoch=7, recorded=5)  # never hears of x
    second.back("y", held_epoch=0, agents_known=0, safe_units=0.0)  # a new agent
    second.run(START + 1.1)
    told_y = second.sent["y"][-1]
    assert told_y.units == 0.0  # x (or z) may be spending all of it
    assert told_y.agents > 1  # not the whole fleet: the last leader's agents are not back

    third = Leader(epoch=9, recorded=7)
    third.back("y", held_epoch=7, agents_known=told_y.agents, safe_units=0.0)
    third.run(START + 1.1)
    # x is back, holding the lease of two leaders ago: it spends that until its first lease
    third.back("x", held_epoch=5, agents_known=first.sent["x"][-1].agents, safe_units=spent_by_x)
    third.run(START + 2.1)
    assert "x" in third.sent
    spent = third.spent({"x": spent_by_x})
    assert len(spent) >= 6
    assert max(spent.values()) <= UNITS, spent
