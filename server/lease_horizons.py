"""The horizons agents may hold, carried from leader to leader in the fleet-lease epoch record.

An agent without a lease spends its last one until its horizon: that lease's start plus
the ``unleased_secs`` (H) it knew. A leader that sees H lowered keeps the old one in force
until no agent can still hold it (see :mod:`.capacity`). A replica started after the
lowering never saw the old H, yet may lead while agents cut off still spend under it. So
every record a leader stores names, per fleet limit, each horizon an agent it (or an
earlier leader) leased may hold, and until when (wall seconds) that binds: the policy's H
until the record's ``until`` plus H and two periods, an H lowered until the leader's own
end for it, an H read from an earlier record until the end that record gave. Every
replica follows the record and keeps the longest horizon still binding in force beside
its own (for the warm-up, for what is kept aside for agents gone without a goodbye, and
on a follower for the agents it keeps).

A record is a value anyone with etcd access can put, so it is bounded: at most
``MAX_HORIZONS`` entries (more collapse into one for every limit), each horizon at most
``MAX_HORIZON_SECS`` (what a policy accepts), and an entry's end at most its horizon plus
``MAX_BIND_EXTRA_SECS`` and the clock skew allowed past the reader's clock (what a leader
writes, as for the epoch); a record saying more is refused. The end is a fixed time, so a
value put by hand and read again later binds no longer: it cannot hold a limit's share
aside for ever.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .capacity import CapacityLeaser

#: The longest horizon a record may name: the most a policy's ``unleased_secs`` may be.
MAX_HORIZON_SECS = 3600.0
#: Entries a record may hold (one or two per fleet limit); more collapse into one.
MAX_HORIZONS = 1024
#: How far past its horizon an entry may bind after it was read: the record's reach ahead
#: (4 s, or 2 s past a round 2.5 periods ahead) and the two periods a last lease may be
#: ahead, with periods of up to 60 s (``lease_secs``).
MAX_BIND_EXTRA_SECS = 4.0 + 5 * 60.0
#: How far a replica's clock may be ahead of another's (as for the epoch and a breaker's
#: ``opened_at``).
SKEW_SECS = 300.0
#: Service and resource names longer than this are refused.
_MAX_NAME = 1024
_REACH = MAX_BIND_EXTRA_SECS + SKEW_SECS
#: The entry for every limit (service and resource empty).
_EVERY = ("", "")


@dataclass(frozen=True, slots=True)
class HeldHorizon:
    """Agents may spend ``service``'s ``resource`` without a lease for ``secs`` after their
    last lease began, and may do so until ``until`` (wall seconds). An empty service and
    resource stand for every limit."""

    service: str
    resource: str
    secs: float
    until: float

    def encode(self) -> list[object]:
        return [self.service, self.resource, round(self.secs, 3), round(self.until, 3)]


def parse_horizons(value: object, now: float | None = None) -> tuple[tuple[HeldHorizon, ...], list[str]]:
    """The entries of a record's ``horizons`` field, and what is wrong with it (each bad
    entry named; the record is refused when anything is). ``now`` (wall seconds): refuse
    an end further ahead than a leader writes."""
    if not isinstance(value, list):
        return (), [f"horizons: a list is required, got {type(value).__name__}"]
    if len(value) > MAX_HORIZONS:
        return (), [f"horizons: at most {MAX_HORIZONS} entries, got {len(value)}"]
    entries, bad = [], []
    for i, item in enumerate(value):
        entry = _entry(item)
        if entry is not None and now is not None and entry.until > now + entry.secs + _REACH:
            bad.append(f"horizons[{i}]: ends {entry.until - now:.0f} s ahead, more than its horizon allows")
        elif entry is None:
            bad.append(
                f"horizons[{i}]: [service, resource, seconds (1 to {MAX_HORIZON_SECS:g}), "
                f"until (wall seconds)] is required, got {item!r:.200}"
            )
        else:
            entries.append(entry)
    if len(bad) > 5:
        bad = [*bad[:5], f"horizons: {len(bad) - 5} more bad entries"]
    return tuple(entries), bad


def _entry(item: object) -> HeldHorizon | None:
    if not isinstance(item, list) or len(item) != 4:
        return None
    service, resource, secs, until = item
    if not (isinstance(service, str) and isinstance(resource, str)):
        return None
    if len(service) > _MAX_NAME or len(resource) > _MAX_NAME:
        return None
    if not (_number(secs) and 1 <= secs <= MAX_HORIZON_SECS and _number(until) and 0 <= until < 1e11):
        return None
    return HeldHorizon(service, resource, float(secs), float(until))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def reduced(entries: Iterable[HeldHorizon]) -> tuple[HeldHorizon, ...]:
    """The entries that matter: per limit, a horizon binding no longer than a longer one is
    dropped. More than ``MAX_HORIZONS`` collapse into one for every limit (the longest
    horizon, until the latest end: more than any agent holds, never less)."""
    by_limit: dict[tuple[str, str], list[HeldHorizon]] = {}
    for entry in entries:
        by_limit.setdefault((entry.service, entry.resource), []).append(entry)
    kept: list[HeldHorizon] = []
    for group in by_limit.values():
        latest = -math.inf
        for entry in sorted(group, key=lambda e: (-e.secs, -e.until)):
            if entry.until > latest:
                kept.append(entry)
                latest = entry.until
    if len(kept) > MAX_HORIZONS:
        secs, until = max(e.secs for e in kept), max(e.until for e in kept)
        return (HeldHorizon(*_EVERY, secs, until),)
    return tuple(kept)


class RecordedHorizons:
    """The horizons the records read say agents may still hold (``wall``: epoch seconds)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self._entries: tuple[HeldHorizon, ...] = ()

    def adopt(self, entries: Iterable[HeldHorizon]) -> None:
        """Take a record's entries (parsed with the clock): each binds until the end it names."""
        self._entries = reduced([*self.entries(), *entries])

    def entries(self) -> tuple[HeldHorizon, ...]:
        """The entries still binding (written again in this leader's records)."""
        now = self.wall()
        self._entries = tuple(e for e in self._entries if e.until > now)
        return self._entries

    def longest(self, service: str, resource: str) -> float:
        """The longest horizon still binding for a limit (0: none)."""
        if not self._entries:
            return 0.0
        wanted = ((service, resource), _EVERY)
        return max((e.secs for e in self.entries() if (e.service, e.resource) in wanted), default=0.0)


def in_force(leaser: CapacityLeaser, until: float) -> list[HeldHorizon]:
    """The horizons agents ``leaser`` leases may hold, when it leases no period ending
    after ``until`` (wall seconds): each limit's own until ``until`` plus it and two
    periods, and the lowered ones it still keeps in force until their end."""
    now, wall = leaser.clock(), leaser.wall()
    found = []
    for limit in leaser.limits.values():
        if limit.metered:
            continue
        name, secs = (limit.service, limit.resource), limit.unleased_secs
        found.append(HeldHorizon(*name, secs, until + secs + 2 * limit.period_secs))
        found.extend(HeldHorizon(*name, h, wall + end - now) for h, end in limit.held_horizons if end > now)
    return found
