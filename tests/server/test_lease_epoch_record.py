"""The fleet-lease epoch record's decisions (see server/lease_epoch.py), without a store."""

from __future__ import annotations

import asyncio

import pytest
from mission_control.server.lease_epoch import (
    EPOCH_SKEW_MS,
    RECORD_AHEAD_SECS,
    EpochRecord,
    LeaseEpochs,
    parse_record,
)

KEY = "/p/fleet-lease-epoch"


class Term:
    """One replica's view: its leader epoch, whether the store is loaded, what it wrote."""

    def __init__(self, own: int = 0, loaded: bool = True) -> None:
        self.own, self.loaded = own, loaded
        self.written: list[bytes] = []
        self.refused: list[str] = []
        self.accept = True
        self.wall = 0.0  # epoch seconds (0: the record and the leader key alone decide)
        self.epochs = LeaseEpochs(
            KEY,
            "r1",
            lambda: self.own,
            lambda: self.loaded,
            self._write,
            self._refused,
            lambda: self.wall,
            clock=self.mono,
        )

    def mono(self) -> float:  # (the wall clock alone moves here)
        return 0.0

    async def _write(self, key: str, value: bytes) -> bool:
        assert key == KEY
        if self.accept:
            self.written.append(value)
        return self.accept

    def _refused(self, key: str, detail: str) -> None:
        self.refused.append(detail)


def test_a_fresh_fleet_has_no_earlier_leases_and_a_restarted_one_does() -> None:
    fresh = Term(own=7)
    assert not fresh.epochs.leased_before()
    assert fresh.epochs.epoch() == 7
    restarted = Term(own=7)
    restarted.epochs.apply(EpochRecord(5, "r0").encode())
    assert restarted.epochs.leased_before()
    assert restarted.epochs.epoch() == 7


def test_epochs_continue_above_the_record_when_the_store_started_over() -> None:
    term = Term(own=3)  # a leader key created at revision 3 of a store wiped since
    term.epochs.apply(EpochRecord(40, "r0").encode())
    assert term.epochs.epoch() == 41
    term.own = 0  # the only replica (no leader key): every start is a term of its own
    assert term.epochs.epoch() == 41


def test_a_leader_of_a_wiped_store_leases_above_every_earlier_leader() -> None:
    """No record and a leader key at a low revision (the store lost its data): the epoch
    is still above what the earlier leader sent, which took over earlier."""
    before = Term(own=5000)
    before.wall = 1_800_000_000.0
    earlier = before.epochs.epoch()
    after = Term(own=2)  # a new process on the wiped store: no record to go above
    after.wall = before.wall + 4.0
    assert after.epochs.epoch() > earlier
    after.wall += 100.0  # the term's epoch is the time it took over, not a clock
    assert after.epochs.epoch() == round((before.wall + 4.0) * 1000)
    after.own = 3  # leading again: a new term, a new time
    assert after.epochs.epoch() == round(after.wall * 1000)


def test_the_answer_is_taken_when_leading_starts_and_kept_for_the_term() -> None:
    term = Term(own=9)
    assert not term.epochs.leased_before()
    term.epochs.apply(EpochRecord(9, "r1").encode())  # its own record, written meanwhile
    assert not term.epochs.leased_before()
    term.own = 12  # leading again later: its own earlier term counts
    assert term.epochs.leased_before()
    assert term.epochs.epoch() == 12


def test_until_the_store_is_read_the_fleet_counts_as_leased_before() -> None:
    term = Term(own=4, loaded=False)
    assert term.epochs.leased_before()
    term.loaded = True
    assert not term.epochs.leased_before()


@pytest.mark.parametrize(
    ("value", "wrong"),
    [
        (b"{garbage", ["not JSON"]),
        (b"[1]", ["not a JSON object"]),
        (b'{"epoch": 0, "leader": 3}', ["epoch:", "leader:"]),
        (b'{"epoch": true, "leader": "r"}', ["epoch:"]),
        (b'{"epoch": 9007199254740992, "leader": "r"}', ["epoch:"]),  # 2^53: the next would be out
        (b'{"epoch": 18446744073709551615, "leader": "r"}', ["epoch:"]),
    ],
)
def test_a_malformed_record_is_refused_counted_and_still_a_sign_of_leases(
    value: bytes, wrong: list[str]
) -> None:
    with pytest.raises(ValueError) as caught:
        parse_record(value)
    assert all(w in str(caught.value) for w in wrong)
    term = Term(own=6)
    term.epochs.apply(EpochRecord(2, "r0").encode())
    term.epochs.apply(value)
    assert term.epochs.malformed == 1 and len(term.refused) == 1
    assert term.epochs.record == EpochRecord(2, "r0")  # the last good one is kept
    assert term.epochs.leased_before()
    alone = Term(own=6)
    alone.epochs.apply(value)
    assert alone.epochs.leased_before() and alone.epochs.epoch() == 6


def test_a_malformed_record_read_again_is_counted_once() -> None:
    # a takeover reads again the value the watch brought: one bad record, counted once
    term = Term(own=6)
    term.epochs.apply(b'{"epoch": -1}')
    term.epochs.apply(b'{"epoch": -1}')
    assert term.epochs.malformed == 1
    term.epochs.apply(b"{garbage")  # another bad value: counted
    term.epochs.apply(EpochRecord(2, "r0").encode())
    term.epochs.apply(b"{garbage")  # bad again after a good one: counted again
    assert term.epochs.malformed == 3


def test_the_record_is_written_ahead_again_after_a_failed_write_and_when_half_is_used() -> None:
    async def main() -> None:
        term = Term(own=5)
        term.accept = False
        assert not term.epochs.may_lease(1.0)
        await asyncio.sleep(0)
        term.accept = True
        assert not term.epochs.may_lease(1.0)  # nothing leased before the record is stored
        await asyncio.sleep(0)
        for _ in range(3):
            assert term.epochs.may_lease(1.0)
            await asyncio.sleep(0)
        assert [parse_record(v) for v in term.written] == [EpochRecord(5, "r1", RECORD_AHEAD_SECS)]
        assert not term.epochs.may_lease(RECORD_AHEAD_SECS + 1)  # not recorded that far yet
        await asyncio.sleep(0)
        assert parse_record(term.written[-1]).until == RECORD_AHEAD_SECS + 1 + RECORD_AHEAD_SECS / 2
        term.wall = parse_record(term.written[-1]).until - RECORD_AHEAD_SECS / 2 + 0.1
        term.epochs.may_lease(0.0, 1.0)  # half used: written further ahead
        await asyncio.sleep(0)
        assert parse_record(term.written[-1]).until == term.wall + RECORD_AHEAD_SECS
        # a leader that lost the fence stores nothing, and leases no further than it had
        term.accept, term.wall = False, 3 * RECORD_AHEAD_SECS
        assert not term.epochs.may_lease(term.wall + 1)
        await asyncio.sleep(0)
        assert not term.epochs.may_lease(term.wall + 1)

    asyncio.run(main())


def test_rounds_of_long_periods_are_recorded_ahead_and_never_wait_for_a_write() -> None:
    """A period may end further ahead than ``RECORD_AHEAD_SECS`` (``lease_secs`` up to 60:
    a round leases the period after the running one, up to 1.5 periods ahead): the record
    reaches past it, and is written again before the next round needs it."""

    async def main() -> None:
        for period in (2.0, 5.0, 60.0):
            term = Term(own=5)
            term.wall = 1_800_000_000.0 + period / 2  # half into a period: its round
            end = term.wall + 1.5 * period
            assert not term.epochs.may_lease(end, end + period)  # the first waits for the record
            await asyncio.sleep(0)
            for _ in range(5):
                assert term.epochs.may_lease(end, end + period), period
                assert parse_record(term.written[-1]).until <= end + period + RECORD_AHEAD_SECS / 2
                await asyncio.sleep(0)  # the next record (if one was asked for) is stored
                term.wall += period
                end += period

    asyncio.run(main())


def test_a_new_leader_learns_until_when_the_earlier_one_may_have_leased() -> None:
    term = Term(own=6)
    term.epochs.apply(EpochRecord(5, "r0", 1234.5).encode())
    assert term.epochs.earlier_until() == 1234.5
    older = Term(own=6)  # a record written before records said it
    older.epochs.apply(b'{"epoch": 5, "leader": "r0"}')
    assert older.epochs.leased_before() and older.epochs.earlier_until() is None
    bad = Term(own=6)
    bad.epochs.apply(b'{"epoch": 5, "leader": "r0", "until": "soon"}')
    assert bad.epochs.leased_before() and bad.epochs.earlier_until() is None
    assert "until:" in bad.refused[0]


def test_the_only_replica_records_nothing_before_the_store_is_read() -> None:
    async def main() -> None:
        term = Term(own=0, loaded=False)
        term.epochs.leased()
        await asyncio.sleep(0)
        assert term.written == [] and term.epochs.epoch() == 0
        term.loaded = True
        term.epochs.leased()
        await asyncio.sleep(0)
        assert [parse_record(v) for v in term.written] == [EpochRecord(1, "r1", RECORD_AHEAD_SECS)]

    asyncio.run(main())


def test_an_epoch_far_above_the_wall_clock_is_refused_and_never_stored() -> None:
    """Epochs are a takeover's milliseconds (plus one per takeover): a record far above the
    clock would be taken by agents and hold every later leader's leases out for good."""

    async def main() -> None:
        now = 1_800_000_000.0
        for epoch in (2**53 - 1, 10**15, round(now * 1000) + EPOCH_SKEW_MS):
            term = Term(own=5)
            term.wall = now
            term.epochs.apply(EpochRecord(epoch, "r0").encode())
            assert "epoch:" in term.refused[0], epoch
            assert term.epochs.leased_before()  # still a sign of earlier leases
            assert term.epochs.epoch() == round(now * 1000)  # the clock, not the refused value
            term.epochs.leased()
            await asyncio.sleep(0)
            assert parse_record(term.written[-1], now).epoch == round(now * 1000)
        skewed = Term(own=5)  # another replica's clock a little ahead: taken
        skewed.wall = now
        skewed.epochs.apply(EpochRecord(round(now * 1000) + 200_000, "r0").encode())
        assert skewed.refused == [] and skewed.epochs.epoch() == round(now * 1000) + 200_001

    asyncio.run(main())


def test_the_record_written_back_after_a_loss_of_data_leaves_its_until_unsaid() -> None:
    """A restore writes back the record this replica knew (none: nothing), and the next
    leader reading it warms up for as long as a leader may record ahead: a newer record
    than this one may have been lost with the data."""
    assert Term(own=6).epochs.restorable() == []
    knew = Term(own=6)
    knew.epochs.apply(EpochRecord(5, "r0", 1234.5).encode())
    [(key, value)] = knew.epochs.restorable()
    assert key == KEY
    assert parse_record(value) == EpochRecord(5, "r0", 0.0)
    successor = Term(own=8)
    successor.epochs.apply(value)
    assert successor.epochs.leased_before() and successor.epochs.earlier_until() is None
    assert successor.epochs.epoch() == 8
