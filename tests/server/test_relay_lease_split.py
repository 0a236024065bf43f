"""How a follower splits the leader's lease among its agents, on the leader's clock: a
request limit in whole calls, and after a shorter period or a lower limit the agents
beside one cut off are not left without a lease until its horizon, while every window
keeps the bound (I4; README, "A changed horizon" and "A lowered limit")."""

from __future__ import annotations

import pytest
from mission_control.client.policy import FleetLimits, default_policy

from tests.server.test_capacity import Leader
from tests.server.test_relay_leases import Follower

WINDOW = 2.0
H = 10.0  # the policy's unleased_secs
NEW = 5004.6  # leases from here on are of the changed policy


def _policy(limit: float = 200, period: float = 0.5) -> object:
    return default_policy(
        "shared",
        rate_limit_requests=limit,
        rate_limit_window_secs=WINDOW,
        fleet=FleetLimits(rate_limit=True, lease_secs=period, unleased_secs=H),
    )


class Fleet:
    """x on the leader, y and c behind a follower; every lease each one got, by period."""

    def __init__(self, limit: float = 200) -> None:
        self.leader = Leader(5000.0)  # a fresh fleet: no warm-up
        self.leader.policies = [_policy(limit)]
        self.leader.leaser.sync_policies()
        self.follower = Follower(self.leader)
        self.leader.report("x", agents_known=3)
        for name in ("y", "c"):
            self.follower.agent(name, agents_known=3)
        #: agent -> period start (s) -> units
        self.got: dict[str, dict[float, float]] = {"x": {}, "y": {}, "c": {}}
        self._seen = 0
        self.paused: set[str] = set()  # link held: nothing gets through either way

    def run(self, until: float) -> None:
        while self.leader.now < until:
            self.leader.run(round(self.leader.now + 0.05, 6))
            self.follower.relay()
            for lease in self.leader.sent.get("x", []):
                self.got["x"][lease.period / 1000] = lease.units
            sent = self.leader.sent.get("f", [])
            for lease in sent[self._seen :]:
                for agent, mine in self.follower.leases.split(lease):
                    if agent not in self.paused:
                        self.got[agent][lease.period / 1000] = mine.units
            self._seen = len(sent)
            for name in {"y", "c"} - self.paused:  # each would spend its last lease unleased
                if name in self.follower.leases.demands.get(("shared", "shared.requests"), {}):
                    last = self.got[name][max(self.got[name])] if self.got[name] else 0.0
                    self.follower.agent(name, agents_known=3, safe_units=last)

    def cut_off_c(self) -> float:
        """c's stream breaks (its link held since it was paused, if it was): it spends its
        last lease every old period until its horizon."""
        self.follower.leases.agent_left("c")
        kept = self.follower.leases.kept[("shared", "shared.requests")]["c"]
        return kept.until

    def change(self, **policy: float) -> None:
        self.leader.policies = [_policy(**policy)]
        self.leader.leaser.sync_policies()


def _spent(fleet: Fleet, old: float, new: float) -> list[tuple[float, float, float]]:
    """(start, length, units): every lease, and c's last one again every old period until
    its horizon (H after its last lease began: it never heard of the change)."""
    spends = [
        (start, new if start >= NEW else old, units)
        for name in ("x", "y")
        for start, units in fleet.got[name].items()
    ]
    spends += [(start, old, units) for start, units in fleet.got["c"].items()]
    last, units = max(fleet.got["c"].items())
    start = last
    while (start := round(start + old, 6)) < last + H:
        spends.append((start, old, units))
    return spends


def _worst_window(spends: list[tuple[float, float, float]], since: float, until: float) -> float:
    """The most a window can hold: each lease may be spent anywhere in its period, so one
    whose period overlaps the window counts in full."""
    worst, t = 0.0, since + 0.01
    while t < until:
        worst = max(worst, sum(u for start, length, u in spends if start < t + WINDOW and start + length > t))
        t = round(t + 0.05, 6)
    return worst


def test_a_follower_splits_a_request_limit_in_whole_calls() -> None:
    fleet = Fleet(limit=20)  # 5 calls a period among three agents, two behind the follower
    fleet.run(5010.0)
    late = [start for start in fleet.got["y"] if start >= 5002.0]
    assert late
    for start in late:
        mine = [fleet.got[a][start] for a in ("y", "c")]
        assert all(units == int(units) for units in mine), mine  # before: 1.5 each
        lease = next(le for le in fleet.leader.sent["f"] if le.period / 1000 == start)
        assert sum(mine) == lease.units  # a whole call of the follower's is not lost
    # the call left over by rounding goes to each in turns: both get 2 some periods
    assert {fleet.got["y"][s] for s in late} == {1.0, 2.0}
    assert {fleet.got["c"][s] for s in late} == {1.0, 2.0}


@pytest.mark.parametrize("breaks", [0.0, 2.0])
@pytest.mark.parametrize("period", [0.25, 0.1])
def test_a_shorter_period_leaves_the_agents_beside_one_cut_off_a_share(period: float, breaks: float) -> None:
    fleet = Fleet()  # 200 per 2 s: 50 a 0.5-s period
    fleet.run(5004.0)
    fleet.paused.add("c")  # c's link is held: it spends its last lease, 17 every 0.5 s
    fleet.run(5004.0 + min(breaks, 0.6))
    if not breaks:
        until = fleet.cut_off_c()
    fleet.run(5004.6)
    fleet.change(period=period)  # c never hears of it
    if breaks:  # the follower sees c's stream break only now, after leasing it in new terms
        fleet.run(5004.0 + breaks)
        until = fleet.cut_off_c()
    fleet.run(until + 2.0)
    during = [s for s in fleet.got["y"] if 5006.5 <= s < until - 1.0]
    assert during
    # y is leased a share in every period but those of c's last old period (the code
    # before kept all of c's old lease out of each new lease, and left y less than one
    # call until c's horizon)
    assert min(fleet.got["y"][s] for s in during) >= 1.0
    # and every window from the end of the last old period keeps the bound: the limit and
    # one (new) period, with c spending its whole old lease at once every old period
    spends = _spent(fleet, 0.5, period)
    assert _worst_window(spends, 5005.0, until + 2.0) <= 200 + 200 * period / WINDOW


@pytest.mark.parametrize("period", [0.25, 0.1])
def test_an_agent_whose_link_is_held_across_a_shorter_period_is_held_for(period: float) -> None:
    """c's link is held from before the change until its stream breaks 2.4 s later: it
    hears no lease in the new terms and spends its old lease every old period. The
    follower, not hearing its demand for two of its old periods, holds for it what it
    spends so (the code before passed it its share of each new lease, which it never got:
    the first window from the end of the last old period held 214 against 210 with 0.1 s,
    227 against 225 with 0.25 s)."""
    fleet = Fleet()
    fleet.run(5004.0)
    fleet.paused.add("c")
    fleet.run(5004.6)
    fleet.change(period=period)
    fleet.run(5006.4)
    until = fleet.cut_off_c()
    fleet.run(until + 2.0)
    spends = _spent(fleet, 0.5, period)
    assert _worst_window(spends, 5005.0, until + 2.0) <= 200 + 200 * period / WINDOW
    # and the agents beside it are still leased a share
    during = [s for s in fleet.got["y"] if 5006.5 <= s < until - 1.0]
    assert during and min(fleet.got["y"][s] for s in during) >= 1.0


@pytest.mark.parametrize("breaks", [0.0, 2.0])
def test_a_lowered_limit_keeps_the_documented_bound_and_a_share_beside_one_cut_off(breaks: float) -> None:
    fleet = Fleet()
    fleet.run(5004.0)
    fleet.paused.add("c")
    old = max(fleet.got["c"].items())[1]
    if not breaks:
        until = fleet.cut_off_c()
    fleet.run(5004.6)
    fleet.change(limit=40)  # 10 a period; c never hears of it and spends its 17 a period
    if breaks:
        fleet.run(5004.0 + breaks)
        until = fleet.cut_off_c()
    fleet.run(until + 4.0)
    during = [s for s in fleet.got["y"] if 5006.5 <= s < until - 0.5]
    assert min(fleet.got["y"][s] for s in during) >= 1.0  # before: nothing until c's horizon
    spends = _spent(fleet, 0.5, 0.5)
    # while c may spend its old lease: the new limit and one period, and what c spends of
    # its old lease in the window (at most one a period)
    assert _worst_window(spends, 5006.0, until) <= 40 + 10 + old * (WINDOW / 0.5 + 1)
    # once past its horizon: the new bound
    assert _worst_window(spends, until + 0.5, until + 2.0) <= 40 + 10


def test_a_lowered_limit_keeps_the_documented_bound_on_the_leader() -> None:
    leader = Leader(5000.0)  # x, y and c connected to the leader itself
    for holder in ("x", "y", "c"):
        leader.report(holder, agents_known=3)
    leader.run(5004.0)
    for holder in ("x", "y", "c"):  # each would spend its last lease without a new one
        leader.report(holder, agents_known=3, safe_units=leader.sent[holder][-1].units)
    leader.run(5004.1)
    last = leader.sent["c"][-1]
    leader.leaser.forget("c")  # its stream broke: it spends its last lease until its horizon
    leader.run(5004.6)
    leader.policies = [_policy(limit=40)]
    leader.leaser.sync_policies()
    horizon = last.period / 1000 + H
    leader.run(horizon + 4.0)
    spends = [(lease.period / 1000, 0.5, lease.units) for h in ("x", "y") for lease in leader.sent[h]]
    start = last.period / 1000
    while start < horizon:
        spends.append((start, 0.5, last.units))
        start = round(start + 0.5, 6)
    assert _worst_window(spends, 5006.0, horizon) <= 40 + 10 + last.units * (WINDOW / 0.5 + 1)
    assert _worst_window(spends, horizon + 1.0, horizon + 4.0) <= 40 + 10
