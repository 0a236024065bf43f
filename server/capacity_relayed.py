"""What a leader keeps aside for a follower's agents: when a follower restarts (a new process under the same
replica id): the agents the old process kept as gone without a goodbye (cut off, spending
their last leases until their horizon) are unknown to the new one, whose demands no longer
speak for them. So what the old process may have let its agents spend stays aside, under a
key of its own that the new process's demands do not clear, until the horizon of the last
lease it passed on; the new process's first demand takes off what the agents back there say
they hold (an agent back is counted there, not twice). I4 rests on this as on the agents
kept by a follower that stays.

And which of the agent processes a follower keeps (gone from it without a goodbye) are
counted elsewhere: connected to the leader, or named by another follower's demand as one
whose demand, with what it may spend unleased, that demand includes. Only then does the
follower stop keeping it (the fleet roster shows a process under a replica before its demand
reached the leader through it, and that replica's link may break meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterable

from .capacity_state import Holder, LeasedLimit

#: the key of a follower's earlier process, kept aside: '#' is in no replica id
BEFORE = "#before"


def keep_predecessor(limit: LeasedLimit, holder: str) -> None:
    """Follower ``holder``'s old process is gone: what it may have let its agents spend
    (kept aside for it) stays aside under a key of its own until its horizon, whatever the
    new process demands."""
    kept = limit.absent.pop(holder, None)
    if kept is None:
        return
    key = holder + BEFORE
    earlier = limit.absent.get(key)
    if earlier is not None:  # restarted again before that one's horizon: both are kept
        kept = (kept[0] + earlier[0], max(kept[1], earlier[1]))
    limit.absent[key] = kept


def take_back(limit: LeasedLimit, holder: str, held: float) -> None:
    """Follower ``holder``'s new process first demands: the agents back there hold ``held``
    of what is kept for the old process (they spend it through the new one now)."""
    key = holder + BEFORE
    kept = limit.absent.get(key)
    if kept is None:
        return
    units, until = kept
    if units - held > 1e-9:
        limit.absent[key] = (units - held, until)
    else:
        del limit.absent[key]


def named(limit: LeasedLimit, entry: Holder, names: Iterable[str], now: float) -> None:
    """A follower's demand named ``names`` as the agent processes whose demands it includes:
    what this leader kept aside for one of them (gone from here) is counted there now. The
    ones it named lately are remembered for as long as it may keep one gone from it."""
    entry.names = frozenset(names)
    for name in entry.names:
        limit.absent.pop(name, None)
        entry.named_at[name] = now
    since = now - limit.horizon(now) - 2 * limit.period_secs
    for name in [n for n, at in entry.named_at.items() if at < since]:
        del entry.named_at[name]


def counted_elsewhere(limit: LeasedLimit, follower: str) -> list[str]:
    """Of the agent processes follower ``follower``'s demands named lately (it may keep one
    gone from it), those the leader counts through another holder now: connected to it, or
    named by another follower's last demand. An agent a follower keeps is never named, so
    two keeping one never let each other go."""
    entry = limit.holders.get(follower)
    if entry is None or not entry.named_at:
        return []
    others = [e.names for h, e in limit.holders.items() if e.replica and h != follower]
    out = []
    for name in sorted(entry.named_at):
        direct = limit.holders.get(name)
        if (direct is not None and not direct.replica) or any(name in names for names in others):
            out.append(name)
    return out
