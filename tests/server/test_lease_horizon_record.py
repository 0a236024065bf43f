"""The horizons carried by the fleet-lease epoch record (server/lease_horizons.py), on an
injected clock: a replica started after ``unleased_secs`` was lowered keeps the old one in
force while agents an earlier leader leased may hold it (I4), and a hand-put record
cannot hold a limit for ever."""

from __future__ import annotations

import asyncio
import json
from functools import partial

import pytest
from mission_control.client.policy import FleetLimits, default_policy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.capacity import CapacityLeaser
from mission_control.server.lease_epoch import EpochRecord, LeaseEpochs, parse_record
from mission_control.server.lease_horizons import (
    MAX_BIND_EXTRA_SECS,
    MAX_HORIZONS,
    SKEW_SECS,
    HeldHorizon,
    RecordedHorizons,
    in_force,
    reduced,
)

SERVICE, RESOURCE, PERIOD = "shared", "shared.requests", 0.5
UNITS = 50.0  # 200 per 2 s, leased per 0.5 s
OLD, NEW = 10.0, 1.0  # the horizon before and after the operator lowered it
KEY = "/p/fleet-lease-epoch"


def policy(horizon: float) -> object:
    fleet = FleetLimits(rate_limit=True, lease_secs=PERIOD, unleased_secs=horizon)
    return default_policy(SERVICE, rate_limit_requests=200, rate_limit_window_secs=2.0, fleet=fleet)


class Replica:
    """A replica's record follower and leaser on one injected clock (wall = monotonic)."""

    def __init__(self, clock: list[float], own: int, horizon: float) -> None:
        self.clock = clock
        self.policies = [policy(horizon)]
        self.written: list[bytes] = []
        self.sent: dict[str, list[pb.CapacityLease]] = {}
        self.epochs = LeaseEpochs(
            KEY, f"r{own}", lambda: own, lambda: True, self._write, wall=lambda: self.clock[0]
        )
        self.leaser = CapacityLeaser(
            lambda: self.policies,
            lambda holder, message: self.sent.setdefault(holder, []).append(message.lease) is None,
            epoch=self.epochs.epoch,
            clock=lambda: self.clock[0],
            wall=lambda: self.clock[0],
            leased_before=self.epochs.leased_before,
            earlier_until=self.epochs.earlier_until,
            recorded_horizon=self.epochs.held.longest,
        )
        self.epochs.horizons = partial(in_force, self.leaser)
        self.leaser.sync_policies()

    async def _write(self, key: str, value: bytes) -> bool:
        self.written.append(value)
        return True

    async def record(self, end: float) -> EpochRecord:
        """Store a record reaching past a period ending at ``end``; the record stored."""
        self.epochs.leased(end)
        await asyncio.sleep(0)
        return parse_record(self.written[-1])

    def report(self, holder: str, **fields: object) -> None:
        demand = pb.CapacityDemand(service=SERVICE, resource=RESOURCE, wanted=100.0, agents=1, **fields)  # type: ignore[arg-type]
        self.leaser.demand(holder, demand)

    def run(self, until: float) -> None:
        while self.clock[0] < until:
            self.clock[0] = round(self.clock[0] + 0.01, 6)
            self.leaser.tick()

    def last(self, holder: str) -> float:
        return self.sent[holder][-1].units


def test_a_replica_started_after_a_lowering_keeps_the_old_horizon_of_the_earlier_leader() -> None:
    async def main() -> None:
        clock = [3000.0]
        first = Replica(clock, own=5, horizon=OLD)
        first.report("a", safe_units=UNITS / 2)
        first.report("b", safe_units=UNITS / 2)
        record = await first.record(3001.5)  # b is leased, then cut off
        assert HeldHorizon(SERVICE, RESOURCE, OLD, record.until + OLD + 2 * PERIOD) in record.horizons
        # the operator lowers the horizon; a replica started after that takes over at once
        second = Replica(clock, own=6, horizon=NEW)
        second.epochs.apply(first.written[-1])
        second.report("a", agents_known=2, safe_units=UNITS / 2)  # b is not back
        second.run(3000.6)
        assert second.last("a") == pytest.approx(UNITS / 2)
        # b may spend its last lease until it began + the old horizon: still kept aside
        # past the new horizon's end (the code before split the whole limit from here)
        second.run(record.until + NEW + 2 * PERIOD + 1.0)
        assert second.last("a") == pytest.approx(UNITS / 2)
        second.run(record.until + OLD + 2 * PERIOD - 0.5)
        assert second.last("a") == pytest.approx(UNITS / 2)
        second.run(record.until + OLD + 2 * PERIOD + 0.6)
        assert second.last("a") == pytest.approx(UNITS)

    asyncio.run(main())


def test_the_old_horizon_passes_on_to_the_next_leader_without_growing() -> None:
    async def main() -> None:
        clock = [3000.0]
        first = Replica(clock, own=5, horizon=OLD)
        old = await first.record(3001.5)
        binds = old.until + OLD + 2 * PERIOD
        second = Replica(clock, own=6, horizon=NEW)
        second.epochs.apply(first.written[-1])
        second.run(3003.0)
        passed = await second.record(3004.0)
        # the old entry is carried as the earlier leader gave it, not pushed further ahead
        assert HeldHorizon(SERVICE, RESOURCE, OLD, binds) in passed.horizons
        second.epochs.apply(second.written[-1])  # every replica reads its own record back
        clock[0] = binds + 0.1
        later = await second.record(binds + 1.0)
        assert [(e.secs, e.until) for e in later.horizons] == [(NEW, later.until + NEW + 2 * PERIOD)]
        second.epochs.apply(second.written[-1])
        assert second.epochs.held.longest(SERVICE, RESOURCE) == NEW  # its own, read back

    asyncio.run(main())


def test_a_lowering_the_leader_saw_is_recorded_until_no_agent_may_hold_it() -> None:
    async def main() -> None:
        clock = [3000.0]
        leader = Replica(clock, own=5, horizon=OLD)
        leader.policies = [policy(NEW)]
        leader.leaser.sync_policies()
        record = await leader.record(3001.0)
        held = [e for e in record.horizons if e.secs == OLD]
        assert len(held) == 1 and held[0].until >= 3000.0 + OLD + 2 * PERIOD

    asyncio.run(main())


@pytest.mark.parametrize(
    ("horizons", "wrong"),
    [
        ([[SERVICE, RESOURCE, 1e12, 3000.0]], "horizons[0]"),
        ([[SERVICE, RESOURCE, 0, 3000.0]], "horizons[0]"),
        ([[SERVICE, RESOURCE, True, 3000.0]], "horizons[0]"),
        ([[SERVICE, RESOURCE, 10.0, 1e300]], "horizons[0]"),
        ([[SERVICE, 7, 10.0, 3000.0]], "horizons[0]"),
        ([[SERVICE, RESOURCE, 10.0]], "horizons[0]"),
        ([[SERVICE, RESOURCE, 10.0, 3000.0], "x" * 10], "horizons[1]"),
        ({"a": 1}, "horizons: a list"),
        ([[SERVICE, RESOURCE, 10.0, 3000.0]] * (MAX_HORIZONS + 1), f"at most {MAX_HORIZONS}"),
    ],
)
def test_a_record_with_a_bad_horizon_is_refused_naming_it(horizons: object, wrong: str) -> None:
    value = json.dumps({"epoch": 5, "leader": "r0", "until": 3002.0, "horizons": horizons}).encode()
    with pytest.raises(ValueError, match=r"horizons") as caught:
        parse_record(value)
    assert wrong in str(caught.value)
    term = LeaseEpochs(KEY, "r1", lambda: 6, lambda: True, _never)
    term.apply(value)
    assert term.malformed == 1 and term.held.longest(SERVICE, RESOURCE) == 0.0


def test_nan_is_no_horizon() -> None:
    value = b'{"epoch": 5, "leader": "r0", "horizons": [["shared", "shared.requests", NaN, 3000]]}'
    with pytest.raises(ValueError, match=r"horizons\[0\]"):
        parse_record(value)


def test_a_horizon_put_by_hand_binds_no_longer_than_a_leader_could_have_written_it() -> None:
    now, reach = 1000.0, MAX_BIND_EXTRA_SECS + SKEW_SECS
    far = json.dumps({"epoch": 5, "leader": "r0", "horizons": [[SERVICE, RESOURCE, 3600, 9e10]]})
    with pytest.raises(ValueError, match=r"horizons\[0\]: ends .* ahead"):
        parse_record(far.encode(), now)
    horizons = [[SERVICE, RESOURCE, 3600, now + 3600 + reach], ["", "", 5, 1010]]
    value = json.dumps({"epoch": 5, "leader": "r0", "horizons": horizons}).encode()
    clock = [now]
    held = RecordedHorizons(lambda: clock[0])
    held.adopt(parse_record(value, now).horizons)
    assert held.longest(SERVICE, RESOURCE) == 3600.0
    assert held.longest("other", "other.requests") == 5.0  # the entry for every limit
    clock[0] = now + 3600.0 + reach - 1
    held.adopt(parse_record(value, clock[0]).horizons)  # read again later: not pushed on
    assert held.longest(SERVICE, RESOURCE) == 3600.0
    clock[0] = now + 3600.0 + reach + 1
    assert held.longest(SERVICE, RESOURCE) == 0.0
    assert held.entries() == ()


def test_entries_bound_by_a_longer_one_are_dropped_and_too_many_collapse() -> None:
    entries = [
        HeldHorizon(SERVICE, RESOURCE, 10.0, 2000.0),
        HeldHorizon(SERVICE, RESOURCE, 5.0, 1500.0),  # within the 10 s one
        HeldHorizon(SERVICE, RESOURCE, 1.0, 2500.0),  # binds later: kept
    ]
    assert reduced(entries) == (entries[0], entries[2])
    many = [HeldHorizon(f"s{i}", f"s{i}.requests", 1.0 + i % 7, 2000.0 + i) for i in range(MAX_HORIZONS + 1)]
    assert reduced(many) == (HeldHorizon("", "", 7.0, 2000.0 + MAX_HORIZONS),)


async def _never(key: str, value: bytes) -> bool:
    raise AssertionError("not leading")
