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
    # no lease for period 2: the safe share, an equal split by the last known agent count
    assert budget.take(1, 2.1) == 0.0
    assert budget.left == pytest.approx(50 / 4 - 1)
    reports = budget.drain_reports()
    assert (reports[-1][0], reports[-1][1], reports[-1][2]) == (1, 4, 3)  # wanted 4, used 3


def test_a_late_lease_replaces_the_safe_share_of_the_running_period() -> None:
    budget = LeasedBudget(fleet_units=10, period_secs=1.0, safe_share=0.5, now=0.0)
    assert budget.take(2, 0.1) == 0.0  # safe_share set: 5 units at once
    budget.apply(0, 3, start=0.0, period_secs=1.0, agents=2, fleet_units=10)
    assert budget.left == 1  # 3 leased, 2 already used
