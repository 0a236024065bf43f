"""What a leader keeps aside when a follower restarts (a new process under the same
replica id): the agents the old process kept as gone without a goodbye (cut off, spending
their last leases until their horizon) are unknown to the new one, whose demands no longer
speak for them. So what the old process may have let its agents spend stays aside, under a
key of its own that the new process's demands do not clear, until the horizon of the last
lease it passed on; the new process's first demand takes off what the agents back there say
they hold (an agent back is counted there, not twice). I4 rests on this as on the agents
kept by a follower that stays.
"""

from __future__ import annotations

from .capacity_state import LeasedLimit

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
