"""A leader below the epoch an agent holds (server/lease_epoch.py, ``agent_holds``), on an
injected clock: agents ignore leases of a lower epoch, so a leader whose epoch record was
lost after a higher epoch was recorded moves its epoch above the agents' — recorded before
it leases under it, leasing under the recorded one meanwhile, in the same term (no new
warm-up), at most once per ``MOVE_EVERY_SECS`` and never for a claim no record may hold."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.lease_epoch import (
    EPOCH_SKEW_MS,
    MAX_EPOCH,
    MOVE_EVERY_SECS,
    EpochRecord,
    LeaseEpochs,
    parse_record,
)

SERVICE, RESOURCE, PERIOD = "shared", "shared.requests", 0.5
UNITS = 50.0  # 200 per 2 s, leased per 0.5 s
KEY = "/p/fleet-lease-epoch"
START = 1_800_000_000.0  # wall seconds


class Leader:
    """A leader's record follower and leaser, wired as the control plane wires them, on one
    injected clock (wall = monotonic)."""

    def __init__(self, own: int = 7) -> None:
        self.clock = [START]
        self.own = own
        self.accept = True
        self.written: list[bytes] = []
        self.sent: dict[str, list[pb.CapacityLease]] = {}
        self.epochs = LeaseEpochs(
            KEY, "r1", lambda: self.own, lambda: True, self._write, clock=self.wall, wall=self.wall
        )
        fleet = FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=10.0)
        policies = [default_policy(SERVICE, rate_limit_requests=200, rate_limit_window_secs=2.0, fleet=fleet)]
        self.leaser = CapacityLeaser(
            lambda: policies,
            lambda holder, message: self.sent.setdefault(holder, []).append(message.lease) is None,
            epoch=self.epochs.term_epoch,
            lease_epoch=self.epochs.epoch,
            clock=self.wall,
            wall=self.wall,
            leased_before=self.epochs.leased_before,
            earlier_until=self.epochs.earlier_until,
            may_lease=self.epochs.may_lease,
        )
        self.leaser.sync_policies()

    def wall(self) -> float:
        return self.clock[0]

    async def _write(self, key: str, value: bytes) -> bool:
        if self.accept:
            self.written.append(value)
        return self.accept

    def report(self, holder: str, held: int = 0) -> None:
        demand = pb.CapacityDemand(
            service=SERVICE, resource=RESOURCE, wanted=100.0, agents=1, agents_known=1, held_epoch=held
        )
        if held:  # as the control plane does with an agent's demand
            self.epochs.agent_holds(held)
        self.leaser.demand(holder, demand)

    async def run(self, seconds: float) -> None:
        until = self.clock[0] + seconds
        while self.clock[0] < until:
            self.clock[0] = round(self.clock[0] + 0.01, 6)
            self.leaser.tick()
            await asyncio.sleep(0)  # a record asked for is stored

    def epochs_sent(self, holder: str) -> list[int]:
        return [lease.epoch for lease in self.sent.get(holder, [])]


def test_a_leader_below_an_agents_epoch_moves_above_it_once_recorded() -> None:
    async def main() -> None:
        leader = Leader()
        base = leader.epochs.epoch()
        leader.report("a")
        await leader.run(1.0)
        assert set(leader.epochs_sent("a")) == {base}
        held = base + 60_000  # a record put 60 s ahead, since deleted: the agent took it
        leader.accept = False  # the store away: the new epoch cannot be recorded
        leader.report("a", held)
        leader.report("b")  # an agent that holds this leader's epoch
        await leader.run(2.0)
        # nothing leased under an epoch not recorded; leases go on under the recorded one
        # (agent b takes them)
        assert leader.epochs.epoch() == base
        assert leader.epochs.term_epoch() == base  # the same term
        assert set(leader.epochs_sent("b")) == {base}
        count = len(leader.sent["a"])
        assert count > 2
        leader.accept = True
        await leader.run(1.0)
        assert leader.epochs.epoch() == held + 1
        assert parse_record(leader.written[-1]).epoch == held + 1
        # (the round that recorded it leased under the one recorded before)
        later = leader.epochs_sent("a")[count:]
        assert later[-1] == held + 1 and set(later) <= {base, held + 1} and later == sorted(later)
        # the term went on: no warm-up began, the agent is split the whole limit
        assert leader.leaser.term.epoch == base
        limit = leader.leaser.limits[(SERVICE, RESOURCE)]
        assert not limit.warm
        assert leader.sent["a"][-1].units + leader.sent["b"][-1].units == pytest.approx(UNITS)

    asyncio.run(main())


def test_an_epoch_at_or_below_the_leaders_moves_nothing() -> None:
    leader = Leader()
    base = leader.epochs.epoch()
    for held in (1, base - 1, base):
        assert not leader.epochs.agent_holds(held)
    assert leader.epochs.epoch() == base
    assert leader.epochs.refused_claims == 0


@pytest.mark.parametrize("ahead", [EPOCH_SKEW_MS - 1, EPOCH_SKEW_MS, 10**12, MAX_EPOCH, 2**64 - 1])
def test_a_claim_no_record_may_hold_is_refused_and_counted(ahead: int) -> None:
    """A client may send any uint64: one at or above what a record may hold (the clock's
    milliseconds + the skew allowed, and 2^53) would move the epoch where the record
    written for it is refused by every reader, and agents would take it: refused."""
    leader = Leader()
    base = leader.epochs.epoch()
    held = min(round(START * 1000) + ahead, 2**64 - 1)
    assert not leader.epochs.agent_holds(held)
    assert leader.epochs.epoch() == base
    assert leader.epochs.refused_claims == 1


def test_the_highest_claim_allowed_is_recorded_readably() -> None:
    async def main() -> None:
        leader = Leader()
        held = round(START * 1000) + EPOCH_SKEW_MS - 2
        assert leader.epochs.agent_holds(held)
        await leader.run(1.0)
        assert parse_record(leader.written[-1], START).epoch == held + 1  # another replica takes it

    asyncio.run(main())


def test_a_moved_epoch_is_kept_when_the_store_is_read_and_in_later_terms() -> None:
    async def main() -> None:
        leader = Leader(own=7)
        leader.epochs.loaded = lambda: False
        base = leader.epochs.epoch()
        held = base + 5_000
        leader.report("a", held)
        await leader.run(1.0)
        assert leader.epochs.epoch() == held + 1
        leader.epochs.loaded = lambda: True  # the store read: the term starts over as a new one
        leader.epochs.apply(EpochRecord(base, "r0").encode())
        assert leader.epochs.epoch() == held + 1
        leader.own = 9  # leading again later, the record lost again meanwhile
        assert leader.epochs.epoch() >= held + 1

    asyncio.run(main())


def parse_all(values: list[bytes]) -> list[EpochRecord]:
    return [parse_record(value) for value in values]


def test_a_flood_of_claims_moves_the_epoch_at_most_once_per_interval_and_leasing_goes_on() -> None:
    """A client claiming one above the leader's epoch every 10 ms (each in range) moved it
    with every claim, and nothing was leased while the claims came (the code before: 0
    leases in 10 s, 1,000 moves). Now the epoch moves at most once per MOVE_EVERY_SECS
    and an honest agent is leased every period, first under the recorded epoch."""

    async def main() -> None:
        leader = Leader()
        leader.report("honest")
        await leader.run(2.0)
        before, writes = len(leader.sent["honest"]), len(leader.written)
        seconds = 10.0
        until = leader.clock[0] + seconds
        while leader.clock[0] < until:
            leader.report("hostile", held=leader.epochs.epoch() + 1)
            leader.report("honest", held=max(leader.epochs_sent("honest")))
            await leader.run(0.01)
        during = leader.sent["honest"][before:]
        assert leader.epochs.moved <= seconds / MOVE_EVERY_SECS + 1
        assert leader.epochs.moved >= 2  # a claim is still taken
        # every period leased (no period passes without one), and the honest agent (which
        # only moves forward in epoch) takes each: epochs never go down
        assert len(during) >= seconds / PERIOD - 2
        epochs = [lease.epoch for lease in during]
        assert epochs == sorted(epochs)
        # a record written per move, beside the ones written every RECORD_AHEAD_SECS / 2
        records = parse_all(leader.written[writes:])
        assert len(records) <= 2 * (seconds / MOVE_EVERY_SECS + 1)
        # each says until when its leader may lease no earlier than the one before (a
        # successor keeps aside no less), and every lease's period is within one written
        # of its epoch
        untils = [record.until for record in records]
        assert untils == sorted(untils)
        recorded = [(r.epoch, r.until) for r in parse_all(leader.written)]
        for lease in during:
            end = (lease.period + PERIOD * 1000) / 1000
            assert any(epoch == lease.epoch and until >= end for epoch, until in recorded)

    asyncio.run(main())
