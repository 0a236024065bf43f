"""Fair shares of a fleet limit, and an agent's leased budget, with an injected clock."""

from __future__ import annotations

import pytest
from mission_control.client.fleet_limits import IDLE_FLOOR, LeasedBudget, fair_share


def test_fair_share_gives_the_modest_what_they_ask_and_splits_the_rest() -> None:
    shares = fair_share(100, {"light-1": 5, "light-2": 10, "heavy-1": 80, "heavy-2": 200})
    assert shares["light-1"] == 5 and shares["light-2"] == 10
    assert shares["heavy-1"] == pytest.approx(42.5) and shares["heavy-2"] == pytest.approx(42.5)
    assert sum(shares.values()) == pytest.approx(100)


def test_fair_share_never_exceeds_the_total_and_nobody_starves() -> None:
    shares = fair_share(60, {"a": 0, "b": 1000, "c": 1000})
    assert sum(shares.values()) <= 60 + 1e-9
    assert shares["a"] == pytest.approx(60 / 3 * IDLE_FLOOR)  # an idle agent can still start
    assert shares["b"] == shares["c"]
    assert fair_share(10, {}) == {}


def test_a_budget_spends_its_lease_then_waits_for_the_next_period() -> None:
    budget = LeasedBudget(fleet_units=50, period_secs=1.0, safe_share=None, now=0.0)
    assert budget.take(1, 0.1) > 0  # the first period waits for a lease
    budget.apply(1, 3, start=1.0, period_secs=1.0, agents=4, fleet_units=50)
    assert [budget.take(1, 1.1) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = budget.take(1, 1.2)
    assert wait == pytest.approx(0.8)  # capacity returns with the next period
    # no lease for period 2: the safe share, the last lease (what the fleet last decided)
    assert budget.take(1, 2.1) == 0.0
    assert budget.left == pytest.approx(3 - 1)
    reports = budget.drain_reports()
    assert (reports[-1].period, reports[-1].wanted, reports[-1].used) == (1, 4, 3)  # wanted 4, used 3
    assert reports[-1].leased and not budget.leased


def test_a_late_lease_replaces_the_safe_share_of_the_running_period() -> None:
    budget = LeasedBudget(fleet_units=10, period_secs=1.0, safe_share=0.5, now=0.0)
    assert budget.take(2, 0.1) == 0.0  # safe_share set: 5 units at once
    budget.apply(0, 3, start=0.0, period_secs=1.0, agents=2, fleet_units=10)
    assert budget.left == 1  # 3 leased, 2 already used


def test_a_new_agent_does_not_believe_it_is_alone() -> None:
    budget = LeasedBudget(fleet_units=50, period_secs=1.0, safe_share=None, now=0.0)
    # never leased: it does not know how many share the limit, so it spends nothing...
    assert all(budget.take(1, t / 10) > 0 for t in range(40))
    # ...until its first lease; afterwards, without one, its last lease
    budget.apply(5000, 4, start=5.0, period_secs=1.0, agents=5, fleet_units=50)
    assert [budget.take(1, 5.5) for _ in range(5)] == [0.0] * 4 + [pytest.approx(0.5)]
    assert budget.take(1, 6.1) == 0.0 and budget.left == pytest.approx(4 - 1)


def test_a_smaller_lease_caps_what_is_left_of_the_safe_share() -> None:
    budget = LeasedBudget(fleet_units=40, period_secs=1.0, safe_share=None, now=0.0)
    budget.apply(1000, 20, start=1.0, period_secs=1.0, agents=2, fleet_units=40)
    assert budget.take(1, 2.6) == 0.0  # no lease for this period: its last one, 20 units
    budget.apply(3000, 5, start=3.0, period_secs=1.0, agents=8, fleet_units=40)
    assert budget.left == pytest.approx(5 - 1)  # not 19: eight share the limit now


def test_leases_only_move_forward_in_epoch_and_period() -> None:
    budget = LeasedBudget(fleet_units=50, period_secs=1.0, safe_share=None, now=0.0)
    budget.apply(1000, 10, start=1.0, period_secs=1.0, agents=5, fleet_units=50, epoch=3)
    assert budget.take(4, 1.1) == 0.0 and budget.period == 1000
    # a deposed leader's lease for the next period is ignored
    budget.apply(2000, 50, start=2.0, period_secs=1.0, agents=1, fleet_units=50, epoch=2)
    # a new leader's lease for the running period replaces it, less what was spent
    budget.apply(1000, 6, start=1.0, period_secs=1.0, agents=5, fleet_units=50, epoch=4)
    assert budget.left == pytest.approx(2)
    # ... and its numbering goes on where the earlier one's was
    budget.apply(2000, 7, start=2.0, period_secs=1.0, agents=5, fleet_units=50, epoch=4)
    assert budget.take(7, 2.1) == 0.0 and budget.take(1, 2.2) > 0
    budget.apply(1000, 50, start=1.0, period_secs=1.0, agents=5, fleet_units=50, epoch=5)  # over
    assert budget.period == 2000 and budget.left == 0


def test_a_lease_is_never_spent_before_its_period_starts() -> None:
    budget = LeasedBudget(fleet_units=40, period_secs=1.0, safe_share=None, now=0.0)
    budget.apply(1000, 10, start=1.0, period_secs=1.0, agents=4, fleet_units=40)
    assert budget.take(9, 1.0) == 0.0
    # the next lease starts a little after the agent's own count would end the period
    # (it arrived late): the running lease runs on until then, with no more units
    budget.apply(2000, 10, start=2.3, period_secs=1.0, agents=4, fleet_units=40)
    assert budget.take(1, 2.1) == 0.0 and budget.period == 1000
    assert budget.take(1, 2.2) > 0
    assert budget.take(10, 2.3) == 0.0 and budget.period == 2000
    # a lease far later than that leaves an unleased gap: its last lease, pro rata
    budget.apply(3000, 10, start=3.9, period_secs=1.0, agents=4, fleet_units=40)
    budget.take(0, 3.4)
    assert not budget.leased and budget.left == pytest.approx(10 * 0.6)


@pytest.mark.parametrize("safe_share", [None, 0.2])
def test_an_agent_cut_off_spends_without_a_lease_until_its_horizon_then_nothing(
    safe_share: float | None,
) -> None:
    budget = LeasedBudget(fleet_units=10, period_secs=1.0, safe_share=safe_share, now=0.0, unleased_secs=5.0)
    budget.apply(1000, 4, start=1.0, period_secs=1.0, agents=2, fleet_units=10)
    unleased = budget.safe_units()
    assert unleased == (4 if safe_share is None else 2)

    def spent(second: float) -> int:
        return sum(budget.take(1, second + 0.01 * i) == 0.0 for i in range(20))

    assert spent(1.1) == 4
    # no lease after period 1000 (starting at 1.0): its last lease, or its safe share,
    # until 5 s after that lease began, and nothing after
    assert [spent(float(s) + 0.1) for s in range(2, 6)] == [unleased] * 4
    assert not budget.cut_off(5.9)
    assert spent(6.1) == 0 and spent(9.1) == 0
    assert budget.cut_off(9.1)
    # a lease again: it spends, and has a new horizon
    budget.apply(10000, 3, start=10.0, period_secs=1.0, agents=2, fleet_units=10, epoch=2)
    assert spent(10.1) == 3 and not budget.cut_off(10.1)
    assert [spent(float(s) + 0.1) for s in range(11, 16)] == [budget.safe_units()] * 4 + [0]


def test_a_period_the_horizon_cuts_gives_only_its_part_before_the_horizon() -> None:
    budget = LeasedBudget(fleet_units=10, period_secs=1.0, safe_share=None, now=0.0, unleased_secs=2.5)
    budget.apply(1000, 4, start=1.0, period_secs=1.0, agents=2, fleet_units=10)
    for second in (1.1, 2.1, 3.1):
        while budget.take(1, second) == 0.0:
            pass
    budget.tick(4.1)
    assert budget.drain_reports()[-1].used == 2  # the period of 3.0 to 4.0: half of it


def test_a_new_leader_whose_clock_is_behind_starts_its_own_numbering() -> None:
    # leader 1's clock is 2 s ahead of leader 2's: its period numbers are 2,000 higher
    budget = LeasedBudget(fleet_units=50, period_secs=1.0, safe_share=None, now=0.0, unleased_secs=10.0)
    budget.apply(11000, 10, start=1.0, period_secs=1.0, agents=5, fleet_units=50, epoch=1)
    assert budget.take(4, 1.1) == 0.0 and budget.period == 11000
    # leader 1 is gone: unleased periods at its last lease, the agent counting on
    assert budget.take(4, 2.1) == 0.0 and budget.take(4, 3.1) == 0.0 and budget.period == 13000
    # leader 2 leases from its own (lower) numbers, for a period starting inside the running
    # one: it takes that period's place, and what was spent there counts against it
    budget.apply(11500, 6, start=3.5, period_secs=1.0, agents=5, fleet_units=50, epoch=2)
    assert budget.take(2, 3.6) == 0.0 and budget.period == 11500 and budget.leased
    assert budget.take(1, 3.65) > 0  # 6 leased, 4 spent at 3.1 in the period it replaced
    # and its next leases are taken, period after period, long after the horizon of leader 1
    for n in range(1, 30):
        budget.apply(11500 + n * 1000, 7, start=3.5 + n, period_secs=1.0, agents=5, fleet_units=50, epoch=2)
        assert budget.take(7, 3.6 + n) == 0.0, n
        assert budget.leased and budget.period == 11500 + n * 1000
        assert budget.take(1, 3.7 + n) > 0  # never more than the lease
    assert not budget.cut_off(33.0)
