"""The leader's leases of a fleet limit, on an injected clock (I4)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.inbound import bounded_demand
from mission_control.server.lease_epoch import RECORD_AHEAD_SECS

POLICY = default_policy(
    "shared",
    rate_limit_requests=200,
    rate_limit_window_secs=2.0,
    fleet=FleetLimits(rate_limit=True, lease_secs=0.5, unleased_secs=10.0),
)
UNITS = 50.0  # 200 per 2 s, leased per 0.5 s
RESOURCE = "shared.requests"
#: How long after its last lease began a cut-off agent may still spend (10 s), and the
#: periods by which that lease may be ahead of when the leader last heard from it.
HORIZON = 10.0 + 2 * 0.5


class Leader:
    """A leaser on a clock of its own; what it sends is kept per holder."""

    def __init__(self, now: float, epoch: int = 1, earlier: float | None = None) -> None:
        """``earlier``: until when the earlier leader's record let it lease (None: unknown)."""
        self.now = now
        self.policies = [POLICY]
        self.sent: dict[str, list[pb.CapacityLease]] = {}
        self.gone: set[str] = set()
        self.leaser = CapacityLeaser(
            lambda: self.policies,
            self._send,
            epoch=lambda: epoch,
            clock=lambda: self.now,
            wall=lambda: self.now,
            earlier_until=lambda: earlier,
        )
        self.leaser.sync_policies()

    def _send(self, holder: str, message: pb.ConnectResponse) -> bool:
        self.sent.setdefault(holder, []).append(message.lease)
        return holder not in self.gone

    def report(self, holder: str, wanted: float = 100.0, **fields: object) -> None:
        fields.setdefault("agents", 1)
        demand = pb.CapacityDemand(service="shared", resource=RESOURCE, wanted=wanted, **fields)  # type: ignore[arg-type]
        self.leaser.demand(holder, demand)

    def run(self, until: float) -> None:
        while self.now < until:
            self.now = round(self.now + 0.01, 6)
            self.leaser.tick()

    def leased(self, period: int) -> float:
        return sum(lease.units for leases in self.sent.values() for lease in leases if lease.period == period)


def test_periods_are_numbered_by_the_clock_and_only_those_ahead_are_leased() -> None:
    first = Leader(1000.3)
    first.report("a")
    first.run(1001.0)
    periods = sorted({lease.period for lease in first.sent["a"]})
    assert periods == [1000500, 1001000]  # not 1000000: that period was running
    assert all(first.leased(p) <= UNITS + 1e-9 for p in periods)
    # a new leader, after a restart, goes on with the same numbering
    second = Leader(1003.2, epoch=2)
    second.report("a", agents_known=1, safe_units=UNITS)
    second.run(1003.8)
    assert [lease.period for lease in second.sent["a"]] == [1003500, 1004000]
    assert all(lease.epoch == 2 for lease in second.sent["a"])


def test_a_new_leader_keeps_back_what_agents_not_yet_back_may_spend() -> None:
    leader = Leader(2000.0)
    # two of five agents the last leader leased are back; three still spend 10 each
    for holder in ("a", "b"):
        leader.report(holder, agents_known=5, safe_units=UNITS / 5)
    leader.run(2000.6)
    assert leader.leased(2000500) == pytest.approx(UNITS - 3 * UNITS / 5)
    for holder in ("c", "d", "e"):
        leader.report(holder, agents_known=5, safe_units=UNITS / 5)
    leader.run(2001.1)
    assert leader.leased(2001000) == pytest.approx(UNITS)


@pytest.mark.parametrize(
    ("earlier", "ahead"), [(3002.0, 2.0), (None, RECORD_AHEAD_SECS), (3099.0, RECORD_AHEAD_SECS)]
)
def test_the_warm_up_ends_at_the_horizon_of_the_earlier_leaders_last_lease(
    earlier: float | None, ahead: float
) -> None:
    # the earlier leader recorded it might lease until 3002 (or did not say, or said a
    # time further ahead than a leader records): nobody it leased spends unleased later
    # than that plus the horizon
    leader = Leader(3000.0, earlier=earlier)
    leader.report("a", agents_known=5, safe_units=UNITS / 5)
    leader.run(3000.6)
    assert leader.leased(3000500) == pytest.approx(UNITS / 5)
    end = 3000.0 + ahead + HORIZON
    leader.run(end - 0.5)
    assert leader.leased(round((end - 0.5) * 1000)) == pytest.approx(UNITS / 5)
    leader.run(end + 0.5)
    assert leader.leased(round((end + 0.5) * 1000)) == pytest.approx(UNITS)
    assert leader.leaser.usage()[0].kept_aside == 0


def test_the_split_is_per_agent_whether_behind_a_follower_or_not() -> None:
    leader = Leader(5000.0)  # a fresh fleet
    leader.report("a")
    leader.report("b", wanted=30.0)
    # a follower relays four agents: one modest, three wanting all they can get
    leader.report("follower", wanted=310.0, agents=4, agents_wanted=[10.0, 100.0, 100.0, 100.0])
    leader.run(5000.6)
    # 50 among six agents: the modest take 10 (b 30 is over 1/6 of 50, so is capped at
    # the level), the other four ~ (50 - 10) / 5 each
    level = (UNITS - 10.0) / 5
    assert leader.sent["a"][-1].units == pytest.approx(math.floor(level), abs=1)
    assert leader.sent["b"][-1].units == pytest.approx(math.floor(level), abs=1)
    assert leader.sent["follower"][-1].units == pytest.approx(10.0 + 3 * level, abs=1)
    assert leader.leased(5000500) == pytest.approx(UNITS)


def test_a_follower_that_does_not_say_each_agents_demand_counts_as_that_many_alike() -> None:
    leader = Leader(5000.0)
    leader.report("a")
    leader.report("follower", wanted=300.0, agents=3)
    leader.run(5000.6)
    assert leader.sent["follower"][-1].units == pytest.approx(3 * UNITS / 4, abs=1)


def _horizon(secs: float) -> object:
    return default_policy(
        "shared",
        rate_limit_requests=200,
        rate_limit_window_secs=2.0,
        fleet=FleetLimits(rate_limit=True, lease_secs=0.5, unleased_secs=secs),
    )


def test_a_horizon_lowered_during_the_warm_up_takes_effect_once_no_agent_holds_the_old() -> None:
    # agents the earlier leader leased (its record: until 3002) are cut off knowing the
    # 10 s horizon; the operator lowers it to 1 s just after this leader took over
    leader = Leader(3000.0, earlier=3002.0)
    leader.report("a", agents_known=5, safe_units=UNITS / 5)
    leader.run(3000.2)
    leader.policies = [_horizon(1.0)]
    leader.leaser.sync_policies()
    leader.run(3000.6)
    assert leader.leased(3000500) == pytest.approx(UNITS / 5)
    end = 3002.0 + HORIZON  # the old horizon of the earlier leader's last lease
    leader.run(end - 0.5)
    assert leader.leased(round((end - 0.5) * 1000)) == pytest.approx(UNITS / 5)
    # the old horizon is held no longer than an agent cut off at the change may keep it
    leader.run(3000.2 + 10.0 + 1.0 + RECORD_AHEAD_SECS + 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)


def test_a_horizon_lowered_keeps_an_agent_cut_off_before_aside_for_the_old_one() -> None:
    leader = Leader(4000.0)  # a fresh fleet
    for holder in ("a", "b"):
        leader.report(holder, agents_known=2, safe_units=UNITS / 2)
    leader.run(4010.6)
    leader.policies = [_horizon(1.0)]  # lowered; b breaks before it heard of that
    leader.leaser.sync_policies()
    leader.leaser.forget("b")
    leader.run(4010.6 + HORIZON - 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
    leader.run(4010.6 + HORIZON + 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)


def test_an_agent_cut_off_keeps_its_safe_share_until_its_horizon() -> None:
    leader = Leader(4000.0)  # a fresh fleet: no warm-up
    for holder in ("a", "b"):
        leader.report(holder, agents_known=2, safe_units=UNITS / 2)
    leader.run(4010.6)
    assert leader.leased(4010500) == pytest.approx(UNITS)
    leader.leaser.forget("b")  # its stream broke: it may be alive, spending 25 a period
    leader.run(4011.1)
    assert leader.leased(4011000) == pytest.approx(UNITS / 2)
    usage = leader.leaser.usage()[0]
    assert (usage.kept_aside, usage.past_horizon) == (UNITS / 2, 0)
    leader.run(4010.6 + HORIZON - 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS / 2)
    leader.run(4010.6 + HORIZON + 0.5)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)
    usage = leader.leaser.usage()[0]
    assert (usage.kept_aside, usage.past_horizon) == (0, 1)
    leader.report("b", agents_known=2, safe_units=0)  # back: no longer past its horizon
    assert leader.leaser.usage()[0].past_horizon == 0


def test_no_period_is_leased_past_what_the_leader_recorded() -> None:
    leader = Leader(4500.0)
    recorded = [4502.0]
    leader.leaser.may_lease = lambda end, then: end <= recorded[0]
    leader.report("a")
    leader.run(4503.0)
    assert sorted({lease.period for lease in leader.sent["a"]}) == [4500500, 4501000, 4501500]
    recorded[0] = 4504.0  # recorded further ahead: the periods up to there follow
    leader.run(4503.6)
    assert leader.sent["a"][-1].period == 4503500


def test_an_agent_that_says_goodbye_frees_its_share_at_once() -> None:
    leader = Leader(5000.0, earlier=4990.0)
    leader.run(5000.0 + HORIZON)  # warmed up
    for holder in ("a", "b"):
        leader.report(holder, agents_known=2, safe_units=UNITS / 2)
    leader.report("b", leaving=True)
    leader.leaser.forget("b")
    leader.run(5011.6)
    assert leader.leased(5011500) == pytest.approx(UNITS)
    assert [lease.agents for lease in leader.sent["a"]] == [1]


def test_what_a_shrinking_holder_gives_up_goes_to_others_a_period_later() -> None:
    leader = Leader(6000.0)
    leader.report("a", wanted=40)
    leader.report("b", wanted=10)
    leader.run(6000.6)
    assert leader.sent["a"][-1].units == 40 and leader.sent["b"][-1].units == 10
    leader.report("a", wanted=10)  # a wants less now, b more
    leader.report("b", wanted=40)
    leader.run(6001.1)
    # a asked less in one period only (it may ask 40 again): both are split for 40, and
    # a may not get its new lease in time and spend its 40: b cannot have more yet
    assert leader.sent["a"][-1].units == 25 and leader.sent["b"][-1].units == 10
    leader.report("a", wanted=10)  # a second period asking less
    leader.report("b", wanted=40)
    leader.run(6001.6)
    # a is leased 10; b only what a gave up a period ago (a may still spend its 25)
    assert leader.sent["a"][-1].units == 10 and leader.sent["b"][-1].units == 25
    leader.run(6002.1)
    assert leader.sent["b"][-1].units == 40


def test_a_new_leaders_own_leases_do_not_end_its_warm_up() -> None:
    leader = Leader(7000.0, epoch=2)
    leader.report("a", agents_known=4, safe_units=UNITS / 4)
    leader.run(7000.6)
    # a now hears this leader's count; the three others an earlier leader counted are
    # still out there, spending their last leases
    leader.report("a", agents_known=leader.sent["a"][-1].agents, safe_units=UNITS / 4)
    leader.run(7001.6)
    assert all(lease.units <= UNITS / 4 for lease in leader.sent["a"])
    assert leader.sent["a"][-1].agents == 4


def test_a_round_sent_in_slices_sends_what_one_turn_would_and_marks_the_gone_absent() -> None:
    whole, sliced = Leader(1000.3), Leader(1000.3)
    recorded: list[int] = []
    sliced.leaser.on_leased = lambda: recorded.append(len(sliced.sent))
    for leader in (whole, sliced):
        leader.gone.add("h4")
        for i in range(5):
            leader.report(f"h{i}", wanted=10.0 * (i + 1), safe_units=5.0)
    whole.leaser.tick()
    sliced.leaser.tick(send=False)
    assert sliced.leaser.queued == 5 and not sliced.sent and not recorded
    sliced.leaser.send_queued(2)
    assert sliced.leaser.queued == 3 and sorted(sliced.sent) == ["h0", "h1"] and recorded == [2]
    while sliced.leaser.queued:
        sliced.leaser.send_queued(2)
    assert {h: [(x.period, x.units) for x in leases] for h, leases in sliced.sent.items()} == {
        h: [(x.period, x.units) for x in leases] for h, leases in whole.sent.items()
    }
    # the holder without a stream keeps its safe share out of the next split, as in one turn
    assert "h4" in sliced.leaser.limits[("shared", RESOURCE)].absent


def test_a_warm_up_splits_what_the_agents_back_held_and_does_not_shrink_period_by_period() -> None:
    leader = Leader(8000.0, epoch=2)  # an earlier leader's record: unknown, so a long warm-up
    leader.report("a", wanted=100, agents_known=4, safe_units=UNITS / 2)
    leader.report("new", wanted=100)  # joined meanwhile: it never held a lease
    for second in range(1, 6):
        leader.run(8000.1 + second)
        # each reports its last lease, from this leader: less than a held before
        for holder in ("a", "new"):
            leader.report(holder, wanted=100, agents_known=4, safe_units=leader.sent[holder][-1].units)
    # the two agents not back may spend the other half, no more: the half a held is split
    assert leader.leased(8005000) == pytest.approx(UNITS / 2)
    assert leader.leaser.usage()[0].kept_aside == pytest.approx(UNITS / 2)


def test_only_a_replica_speaks_for_several_agents() -> None:
    # an agent claiming to be a hundred would take a hundred shares
    claim = pb.CapacityDemand(
        service="shared", resource=RESOURCE, wanted=100.0, agents=100, agents_wanted=[1.0] * 100
    )
    own = bounded_demand(claim)
    assert own is not None and (own.agents, list(own.agents_wanted)) == (1, [])
    relayed = bounded_demand(
        pb.CapacityDemand(service="shared", resource=RESOURCE, agents=2, agents_wanted=[1.0, -5.0, 9.0]),
        replica=True,
    )
    assert relayed is not None and list(relayed.agents_wanted) == [1.0, 0.0]


def test_a_claim_never_leased_keeps_nothing_aside_once_no_earlier_lease_can_be_spent() -> None:
    leader = Leader(5000.0)  # a fresh fleet
    for holder in ("a", "b"):
        leader.report(holder)
    leader.run(5000.0 + RECORD_AHEAD_SECS + HORIZON + 1.0)  # past any earlier leader's leases
    # a client says it spends the whole fleet unleased (and that 50 agents shared it), and
    # goes without a goodbye before it was leased
    leader.report("mallory", wanted=1, agents_known=50, safe_units=1e9)
    leader.leaser.forget("mallory")
    start = leader.now
    leader.run(start + 1.0)
    assert leader.sent["a"][-1].units + leader.sent["b"][-1].units == pytest.approx(UNITS)
    assert leader.leaser.usage()[0].kept_aside == 0


def test_a_claim_above_the_leases_sent_is_kept_aside_only_as_far_as_they_go() -> None:
    leader = Leader(6000.0)
    for holder in ("a", "b", "mallory"):
        leader.report(holder, wanted=1 if holder == "mallory" else 100.0)
    leader.run(6000.0 + RECORD_AHEAD_SECS + HORIZON + 1.0)
    lease = max(x.units for x in leader.sent["mallory"][-3:])
    assert lease < UNITS / 10
    leader.report("mallory", wanted=1, agents_known=3, safe_units=1e9)
    leader.leaser.forget("mallory")
    leader.run(leader.now + 1.0)
    assert leader.leaser.usage()[0].kept_aside == pytest.approx(lease)
    assert leader.sent["a"][-1].units + leader.sent["b"][-1].units == pytest.approx(UNITS - lease, abs=1)


def test_an_earlier_leaders_lease_is_kept_aside_until_its_horizon_not_h_from_now() -> None:
    leader = Leader(7000.0, earlier=7002.0)
    leader.report("a", agents_known=2, safe_units=UNITS / 2)
    leader.run(7000.6)
    assert leader.leased(7000500) == pytest.approx(UNITS / 2)  # warm: b may spend its half
    leader.run(7008.0)
    leader.report("mallory", wanted=1, agents_known=2, safe_units=1e9)  # says it is b
    leader.leaser.forget("mallory")
    end = 7002.0 + HORIZON  # no lease the earlier leader sent is spent after this
    leader.run(end - 0.5)
    assert leader.sent["a"][-1].units <= UNITS / 2
    leader.run(end + 1.0)
    assert leader.sent["a"][-1].units == pytest.approx(UNITS)
    assert leader.leaser.usage()[0].kept_aside == 0


def test_with_a_safe_share_a_claim_is_believed_up_to_that_share() -> None:
    fleet = dataclasses.replace(POLICY.fleet, safe_share=0.1)
    leader = Leader(8000.0)
    leader.policies = [dataclasses.replace(POLICY, fleet=fleet)]
    leader.leaser.sync_policies()
    leader.report("a")
    leader.run(8000.0 + RECORD_AHEAD_SECS + HORIZON + 1.0)
    leader.report("mallory", wanted=1, agents_known=2, safe_units=1e9)
    leader.leaser.forget("mallory")
    leader.run(leader.now + 1.0)
    assert leader.leaser.usage()[0].kept_aside == pytest.approx(UNITS / 10)
