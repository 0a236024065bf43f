"""How a period's units of a fleet limit are split among its holders: by what each agent
asked (max-min fair), in whole units for a request limit, and never more, counting what a
shrinking holder may still spend of its last lease, than the period's pool.

Pure functions: the leader's :class:`~mission_control.server.capacity.CapacityLeaser` keeps
the state and calls these once a period.
"""

from __future__ import annotations

import itertools
import math
import zlib

from mission_control.client.fleet_limits import fair_share

#: A holder is split for by what it asked in its last periods (:func:`asked_now`): a steady
#: caller whose calls fall on the period grid counts 0, 1 or 2 calls in one period (its
#: period starts where its lease says, as it received it), and a lease of nothing after a
#: period that happened to count 0 refuses the call of the next.
ASKED_PERIODS = 3


def asked_now(asked: tuple[tuple[float, ...], ...]) -> tuple[float, ...]:
    """What each agent wants: what it asked in its last period, or the median of its last
    three if that is more — a rise counts at once, a fall once it held for two periods
    (a follower's agents by their place in its report, while it speaks for as many).

    Args:
        asked: per reported period (newest last), what each agent asked in it.
    """
    newest = asked[-1]
    alike = [a for a in asked if len(a) == len(newest)]
    return tuple(max(column[-1], sorted(column)[len(column) // 2]) for column in zip(*alike, strict=True))


def per_agent_share(pool: float, wants: dict[str, tuple[float, ...]]) -> dict[str, float]:
    """Each holder's part of ``pool``: split max-min fair among the agents (a follower
    replica speaks for several, and divides its part among them the same way), so an
    agent behind a follower gets what one connected to the leader would."""
    keys: dict[str, str] = {}
    wanted: dict[str, float] = {}
    for holder, each in wants.items():
        for i, want in enumerate(each):
            key = f"{i}\x00{holder}"
            keys[key], wanted[key] = holder, want
    shares = dict.fromkeys(wants, 0.0)
    for key, units in fair_share(pool, wanted).items():
        shares[keys[key]] += units
    return shares


def whole_units(shares: dict[str, float], turn: int) -> dict[str, float]:
    """The shares in whole units (a fraction of a call is of no use to anybody): each is
    rounded down and the units left over go one each to the largest fractions, ties taking
    turns period by period."""
    whole = {h: math.floor(units + 1e-9) for h, units in shares.items()}
    spare = math.floor(sum(shares.values()) + 1e-9) - sum(whole.values())
    if spare <= 0:
        return {h: float(units) for h, units in whole.items()}

    def rank(holder: str) -> tuple[float, int]:
        return -round(shares[holder] - whole[holder], 6), zlib.crc32(f"{holder}/{turn}".encode())

    for holder in sorted(shares, key=rank)[:spare]:
        whole[holder] += 1
    return {h: float(units) for h, units in whole.items()}


def late_shrinks(
    shares: dict[str, float], last: dict[str, float], pool: float, whole: bool
) -> dict[str, float]:
    """Shares such that the sum over holders of max(last lease, new lease) stays within
    ``pool``: a holder that shrinks may not get its new lease in time and spend its last
    one, so the units it gives up go to others only a period later. What room is left goes
    to the growing holders smallest lease first (max-min, as the split itself): one back
    from nothing to its one call a period is not cut to nothing while others take turns at
    the units left over by rounding (in whole units when ``whole``)."""
    keep = {h: min(units, last.get(h, 0.0)) for h, units in shares.items()}
    held = sum(max(0.0, last.get(h, 0.0) - units) for h, units in shares.items())
    growing = [h for h, units in shares.items() if units > keep[h]]
    room = pool - sum(keep.values()) - held
    if not growing or room >= sum(shares[h] - keep[h] for h in growing) - 1e-9:
        return shares
    level = _level(max(0.0, room), [(keep[h], shares[h]) for h in growing])
    result = dict(keep)
    for h in growing:
        result[h] = min(shares[h], max(keep[h], level))
    if whole:
        result.update({h: float(math.floor(result[h] + 1e-9)) for h in growing})
        spare = math.floor(max(0.0, room) + 1e-9) - sum(result[h] - keep[h] for h in growing)
        for h in sorted((h for h in growing if result[h] < shares[h]), key=result.__getitem__)[: int(spare)]:
            result[h] += 1.0
    return result


def _level(room: float, spans: list[tuple[float, float]]) -> float:
    """The level L such that raising each (low, high) span to min(high, max(low, L))
    takes ``room`` (water-filling; ``room`` is less than every span raised to its high)."""
    edges = sorted({edge for span in spans for edge in span})
    for below, above in itertools.pairwise(edges):
        cost = sum(max(0.0, min(high, above) - max(low, below)) for low, high in spans if low < above)
        if cost >= room - 1e-12:
            rising = sum(1 for low, high in spans if low <= below < high)
            return below + (room / rising if rising else 0.0)
        room -= cost
    return edges[-1]
