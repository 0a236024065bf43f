"""The fleet-lease epoch record: which leader epoch last leased the fleet's shared limits.

Agents report a lease they hold when they reconnect, and that tells a new leader that the
fleet was leased before (see :mod:`.capacity`). When no agent back reports one — they are
still reconnecting, or the ones back are new — only this record tells a fresh fleet from a
restarted one. A leader writes it (through the writer, fenced) once it has leased in its
epoch; every replica follows it with the rest of the store. When a replica takes over:

* a record of an earlier epoch means agents not back yet may still be spending its leases:
  the new leader warms up, splitting only what the agents back were spending;
* its leases carry an epoch above the recorded one, so agents (which only move forward in
  epoch) take them even when the store's revisions started over;
* and never below the wall-clock milliseconds at which it took over. When the store lost
  its data (wiped, restarted empty) there is no record, and the leader key's revision
  starts over low, but a new leader takes over later than every earlier one did, so its
  epoch is still above every epoch an agent holds. That asks no more of the replicas'
  clocks than the lease periods do already: they are cut on the same wall-clock grid.

The record also says until when its leader may lease (``until``, wall-clock seconds): a
leader leases no period that ends later than the record it has stored, fenced, and extends
it ahead of time (``RECORD_AHEAD_SECS``). A deposed leader still sending (paused, then
resumed) cannot extend it, so a new leader knows how late an agent it has not heard from
may have been leased, and keeps aside what such agents may spend until that time plus the
policy's ``unleased_secs`` — when the agents stop spending without a lease.

An agent reports the highest epoch it holds (``CapacityDemand.held_epoch``): a leader below
it — the record was lost or refused after a leader recorded a higher epoch, as a record put
by hand ahead of the clock and then deleted leaves it — would have every lease ignored for
its whole term. It moves its epoch above the highest claim (:meth:`LeaseEpochs.agent_holds`)
at most once per ``MOVE_EVERY_SECS``, and leases under the new epoch once it is recorded —
under the one recorded before until then, so claims never stop leasing; a claim is bounded
as a record is (:func:`claim_in_range`).

Bounds are taken on a wall clock that never goes back (:class:`.capacity_grid.ForwardWall`):
a leader's own epoch stays in its range, and recorded, whatever its wall clock does.

It carries the horizons agents may hold (see :mod:`.lease_horizons`): a replica started
after an operator lowered ``unleased_secs`` learns the old one there.

A malformed value is refused and counted (shown like a broken policy) and never stops
anything: its epoch is not taken, but it still counts as a sign of earlier leases, as the
fleet does until the store is loaded.

**No record, and a history that was leased.** The record may be deleted (by hand, or lost)
while every replica restarts: none then remembers it, and a leader finding none would take
the fleet for a new one and split the whole limit while agents it has not heard from (cut
off, or behind a replica cut off from it) spend the last term's leases. So before it first
records in a store's history a leader marks the history token (``history_leased``, see
:mod:`.store_history`), and a leader that finds the mark but no record takes the past for
unknown: it warms up as after a record that does not say its ``until`` — until the horizon
of a lease sent as far ahead as a leader records, ended early once the agents back hold the
whole limit between them, and not by a count once an agent back names the epoch it holds
(no record names the last leader: see :mod:`.capacity_aside`). Its
epoch is its takeover's milliseconds, above every lease sent before, and agents' claims move
it above a record put ahead of the clock, as ever. A fresh store holds no token, or one
not marked yet: the whole limit is split at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from .capacity_grid import ForwardWall
from .lease_horizons import HeldHorizon, RecordedHorizons, parse_horizons, reduced

_log = logging.getLogger("mission_control.server.lease_epoch")

#: The record's key, under the control plane's prefix.
RECORD = "fleet-lease-epoch"

#: The record's value is not known (the store is not loaded yet).
_UNKNOWN = object()

#: A record's epoch is below this, so the next leader's (one above) is at most this.
#: Epochs are leader-key revisions or wall-clock milliseconds (about 1.7e12 now), counted
#: up by one per takeover, and leases carry them as a uint64: a record near 2^64 would
#: overflow every later leader's leases. This bound is also exact in JSON numbers.
MAX_EPOCH = 2**53

#: How far a record's epoch may be above this replica's wall clock in milliseconds (the
#: clock skew between replicas allowed, as for a breaker's ``opened_at``). Real epochs are at
#: most a takeover's milliseconds plus one per takeover since; one far above would be taken
#: by agents and then hold every later leader's leases out (they only move forward in epoch).
EPOCH_SKEW_MS = 300_000

#: How far ahead a leader records that it may lease; written again when half is left.
RECORD_AHEAD_SECS = 4.0

#: A leader moves its epoch above agents' claims at most this often: a client sending a
#: claim with every demand costs a record write per this time, and no lease.
MOVE_EVERY_SECS = RECORD_AHEAD_SECS / 2


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """Leases were sent in ``epoch`` by the replica ``leader``, for periods that end by
    ``until`` (wall-clock seconds; 0: not said, as in records of earlier versions), to
    agents that may hold the ``horizons`` named."""

    epoch: int
    leader: str
    until: float = 0.0
    horizons: tuple[HeldHorizon, ...] = ()

    def encode(self) -> bytes:
        fields = {
            "epoch": self.epoch,
            "leader": self.leader,
            "until": round(self.until, 3),
            "horizons": [entry.encode() for entry in self.horizons],
        }
        return json.dumps(fields).encode()


def parse_record(value: bytes, now: float | None = None) -> EpochRecord:
    """The record in ``value`` (``now``: wall seconds, to refuse an epoch far above its
    milliseconds). Raises ValueError naming every bad field."""
    try:
        fields = json.loads(value)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    epoch, leader, until = fields.get("epoch"), fields.get("leader"), fields.get("until", 0)
    bad = []
    if isinstance(until, bool) or not isinstance(until, int | float) or not 0 <= until < 1e11:
        bad.append(f"until: seconds since the epoch (a number) are required, got {until!r}")
    top = MAX_EPOCH if now is None else min(MAX_EPOCH, epoch_bound(now))
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 < epoch < top:
        bad.append(f"epoch: a positive integer below {top} is required, got {epoch!r}")
    if not isinstance(leader, str):
        bad.append(f"leader: a replica id (a string) is required, got {leader!r}")
    horizons, wrong = parse_horizons(fields.get("horizons", []), now)
    bad.extend(wrong)
    if bad:
        raise ValueError("; ".join(bad))
    return EpochRecord(epoch, leader, float(until), horizons)  # type: ignore[arg-type]


def epoch_bound(now: float) -> int:
    """Epochs from this bound up are refused at ``now`` (wall seconds): its milliseconds
    plus the clock skew allowed."""
    return round(now * 1000) + EPOCH_SKEW_MS


def claim_in_range(held: int, now: float) -> bool:
    """Whether an agent's claim to hold epoch ``held`` may be taken at ``now`` (wall
    seconds): the epoch one above it is one a record may hold."""
    return held > 0 and held + 1 < min(MAX_EPOCH, epoch_bound(now))


class LeaseEpochs:
    """Follows the record, gives the leaser its epoch and its ``leased_before``, and
    records this leader's epoch once it has leased.

    Args:
        key: the record's store key.
        instance_id: this replica.
        leader_epoch: this replica's term (:attr:`.leadership.Leadership.term`; 0 when not
            leading, or when it is the only replica: then every start is a new term).
        loaded: whether the store's state has been read.
        write: stores a record (fenced to the leader); True when stored.
        refused: shows a malformed value (key, what is wrong).
        wall: epoch seconds (a leader's epoch is never below its takeover's milliseconds).
        clock: monotonic seconds (with ``wall``, the time bounds are taken on, which never
            goes back).
        history_leased: whether the store's history token says the fleet was leased in
            this history (a sign of earlier leases when no record is found).
        mark: marks the history token so before this leader first records (raises what
            the store raises: the record is then tried again at the next lease).
        horizons: the horizons this leader's agents may hold when it leases no period
            ending after the given wall time (see :func:`.lease_horizons.in_force`).
    """

    def __init__(
        self,
        key: str,
        instance_id: str,
        leader_epoch: Callable[[], int],
        loaded: Callable[[], bool],
        write: Callable[[str, bytes], Awaitable[bool]],
        refused: Callable[[str, str], None] = lambda key, detail: None,
        wall: Callable[[], float] = time.time,
        horizons: Callable[[float], Iterable[HeldHorizon]] = lambda until: (),
        clock: Callable[[], float] = time.monotonic,
        history_leased: Callable[[], bool] = lambda: False,
        mark: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.key = key
        self.instance_id = instance_id
        self.leader_epoch = leader_epoch
        self.loaded = loaded
        self.write = write
        self.refused = refused
        self.wall = wall
        self.horizons = horizons
        self.history_leased = history_leased
        self.mark = mark
        self.now = ForwardWall(clock, wall)
        #: The horizons the records read say agents may still hold.
        self.held = RecordedHorizons(wall)
        #: The newest good record seen in the store (None: none).
        self.record: EpochRecord | None = None
        #: Whether any value was seen (a malformed one too).
        self.seen = False
        self.malformed = 0
        self._malformed_value: bytes | None = None  # the last value refused, counted once
        self._term = 0  # the leader epoch the values below belong to
        self._base = 0  # the epoch this term began with
        self._epoch = 0  # the epoch leases carry: the base, or above an agent's (raised)
        self._raised = 0  # the highest epoch moved to above an agent's (kept across terms)
        self._claim = 0  # the highest claim above _epoch, not moved above yet
        self._moved_at = -math.inf  # when (self.now) the last move was recorded
        #: Agents' epoch claims refused (at or above what a record may hold), and taken.
        self.refused_claims = 0
        self.moved = 0
        self._took_over: int | None = None  # the term whose takeover time is in _since
        self._since = 0
        self._prior: object = _UNKNOWN
        self._prior_until: float | None = None
        self._prior_epoch = 0
        self._recorded = (0, 0.0)  # (epoch, until) stored by this replica
        self._writing: asyncio.Task[None] | None = None

    def apply(self, value: bytes | None) -> None:
        """The stored value changed (None: deleted; what was known is kept)."""
        if value is None:
            return
        self.seen = True
        try:
            self.record = parse_record(value, self.now())
            self.held.adopt(self.record.horizons)
        except ValueError as err:
            # counted once: a takeover reads again the value the watch brought
            if value != self._malformed_value:
                self.malformed += 1
                self._malformed_value = value
            self.refused(self.key, f"malformed fleet-lease epoch record ({err}); ignored")
        else:
            self._malformed_value = None

    def restorable(self) -> list[tuple[str, bytes]]:
        """The record to write back when the store lost its data (none: no good one seen).

        A leader taking over without a record takes the fleet for a new one and splits the
        whole limit, while agents it has not heard from (cut off, or behind a replica cut
        from it) spend the leases of a term before the loss until their horizon. The record
        written back says the fleet was leased, so the next leader warms up; its ``until``
        is left unsaid (a newer record may have been lost), so that leader takes the
        longest a leader records ahead (``RECORD_AHEAD_SECS``)."""
        if self.record is None:
            return []
        record = EpochRecord(self.record.epoch, self.record.leader, 0.0, self.record.horizons)
        return [(self.key, record.encode())]

    def _take_over(self) -> None:
        own, known = self.leader_epoch(), self.loaded()
        if own == self._term and (self._prior is not _UNKNOWN or not known):
            return
        # a new term, or the store read for the first time in this one (the epoch may
        # rise then: the leaser starts over as a new leader would)
        if self._took_over != own:
            self._took_over, self._since = own, round(self.now() * 1000)
        self._term = own
        # no record seen, and a history marked leased: the record was deleted or lost
        self._prior = (self.seen or self.history_leased()) if known else _UNKNOWN
        prior = self.record.epoch if self.record is not None else 0
        record = self.record if known else None
        self._prior_until = record.until if record is not None and record.until else None
        self._prior_epoch = record.epoch if record is not None else 0
        self._base = max(own, prior + 1, self._since)
        self._epoch = max(self._base, self._raised)

    def epoch(self) -> int:
        """The epoch this leader's leases carry: its own, above every recorded one and
        not below the time it took over (in milliseconds)."""
        self._take_over()
        return self._epoch

    def term_epoch(self) -> int:
        """The epoch this leader's term began with: it changes with a new term (or the
        store read for the first time in one), not when the epoch moves above an agent's."""
        self._take_over()
        return self._base

    def agent_holds(self, held: int) -> bool:
        """An agent (or a follower, for its agents) holds leases of epoch ``held``. Agents
        ignore leases of a lower epoch, so above this leader's the epoch moves above the
        highest such claim, at most once per ``MOVE_EVERY_SECS`` (see :meth:`may_lease`);
        leases go on under the recorded epoch until the new one is recorded. The term goes
        on (no new warm-up: the agents' leases are this leader's to split, as before). A
        claim no record may hold (:func:`claim_in_range`) is refused and counted: it moves
        nothing. True when the claim is taken (the epoch will move above it)."""
        current = self.epoch()
        if held <= max(current, self._claim):
            return False
        if not claim_in_range(held, self.now()):
            self.refused_claims += 1
            if self.refused_claims % 1000 == 1:  # (a client may send one with every demand)
                _log.warning("an agent claims fleet-lease epoch %d, out of range: ignored", held)
            return False
        self._claim = held
        return True

    def _move_due(self) -> bool:
        return self._claim >= self._epoch and self.now() - self._moved_at >= MOVE_EVERY_SECS

    def leased_before(self) -> bool:
        """Whether, when this replica took over, the fleet may hold an earlier leader's leases."""
        self._take_over()
        return self._prior is not False

    def earlier_until(self) -> float | None:
        """Until when (wall seconds) an earlier leader may have leased, as its record said
        when this replica took over; None: not known (no record read, or one without it)."""
        self._take_over()
        return self._prior_until

    def earlier_epoch(self) -> int:
        """The epoch of the record read when this replica took over (0: none read)."""
        self._take_over()
        return self._prior_epoch

    def may_lease(self, end: float, then: float = 0.0) -> bool:
        """Whether a period ending at ``end`` (wall seconds) is within what this leader has
        recorded. Records further ahead (in the background) when half of the record is
        used, or when the next round's period (ending at ``then``) would not fit: a round
        then never waits for a write, however long its period (``lease_secs`` may be far
        longer than ``RECORD_AHEAD_SECS``)."""
        epoch = self.epoch()
        recorded_epoch, until = self._recorded
        if recorded_epoch != epoch:
            until = 0.0
        if until - self.now() < RECORD_AHEAD_SECS / 2 or max(end, then) > until or self._move_due():
            self.leased(max(end, then))
        return end <= until

    def leased(self, end: float = 0.0) -> None:
        """Record this leader's epoch (moved above agents' claims, when a move is due) and
        how far ahead it may lease: ``RECORD_AHEAD_SECS``, or half of it past a period
        ending at ``end`` (tried again after a failure)."""
        epoch = self.epoch()
        if not epoch or self._writing is not None:
            return
        now, move = self.now(), 0
        if self._move_due():
            epoch = move = self._claim + 1
        if epoch >= min(MAX_EPOCH, epoch_bound(now)):  # stored, it would be refused
            _log.error("fleet-lease epoch %d is out of range: not recorded", epoch)
            return
        # later than any earlier leader's (it wrote its own before this one took over), and
        # than what this one leased under its epoch before a move
        until = max(now + RECORD_AHEAD_SECS, end + RECORD_AHEAD_SECS / 2, self._recorded[1])
        horizons = reduced([*self.horizons(until), *self.held.entries()])
        record = EpochRecord(epoch, self.instance_id, until, horizons)
        self._writing = asyncio.create_task(self._record(record, move, self._term))

    async def _record(self, record: EpochRecord, move: int, term: int) -> None:
        try:
            if self.mark is not None:
                await self.mark()
            if await self.write(self.key, record.encode()):
                self._recorded = (record.epoch, record.until)
                if move and term == self._term and move > self._epoch:
                    self._moved(move)
        except Exception as err:  # the store away or the fence lost: again at the next lease
            _log.info("fleet-lease epoch %d not recorded yet (%s)", record.epoch, err)
        finally:
            self._writing = None

    def _moved(self, epoch: int) -> None:
        """A move above agents' claims is recorded: leases carry it from now on."""
        if self.moved % 1000 == 0:
            _log.warning(
                "agents hold fleet-lease epoch %d, above this leader's %d: moved above",
                epoch - 1,
                self._epoch,
            )
        self._raised = self._epoch = epoch
        self._moved_at = self.now()
        self.moved += 1
