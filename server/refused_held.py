"""A breaker the leader holds over a stored record that does not parse is written over.

A breaker record refused as malformed (garbage put by hand, a bad restore) is shown and
never stops the sync (``sync.py``). What is in force instead is the last good value held
here, or an earlier good revision read back; over either, the leader's next transition
writes with a compare-and-swap on the record's revision and replaces it. When neither is
there — this replica holds the breaker from memory only (the store lost its data while
this replica could not see it, and etcd compacted what was restored before the garbage
went over it) — no transition may ever come to replace it: a HALF_OPEN grants no probe
until the store is known to hold its run (``stored_runs``), an operator's FORCED_OPEN
stays, and a replica that restarts holds nothing of it. So the leader writes what it
holds over such a record, when it takes over and after a load or a watch event refused
one (I2: every replica converges to etcd). A breaker held CLOSED is left alone: a
replica that knows nothing of it holds the same; and so is one nothing is held of.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState

if TYPE_CHECKING:
    from .writes import StateWriter

_log = logging.getLogger("mission_control.server.writes")


def overwrite_refused(writer: StateWriter, names: Iterable[str] | None = None) -> list[str]:
    """While this replica leads (or runs alone): decide again each breaker of ``names``
    (every one held, when None) held not CLOSED over a refused record with nothing good
    in force under it, so that the writer stores it over that record (the compare-and-swap
    that finds the record takes its revision: ``StateWriter._adopt``). Returns those."""
    fence = writer.fence
    if fence is not None and not fence.leading:
        return []
    breakers = writer.breakers
    chosen = []
    for name in breakers.names() if names is None else names:
        held = breakers.find(name)
        if held is None or held.state is BreakerState.CLOSED or writer.is_pending(name):
            continue
        refused = writer.policies.held_refused(writer.breaker_key(name))
        if refused and not breakers.basis(name):
            _log.warning(
                "breaker %s: the store holds a record that does not parse (revision %d) and "
                "nothing good under it; writing the state held here over it",
                name,
                refused,
            )
            writer.decided(name)
            chosen.append(name)
    return chosen
