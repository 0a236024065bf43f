"""What a stored breaker record's counts are for: shown, never counted toward a decision by
an engine that reads them.

A record is written when a transition is decided, and says the state as decided
(``writes.StateWriter.decided``). Its counts are its writer's. The counts toward a state's
next transition — a CLOSED breaker's consecutive failures, a HALF_OPEN's probe successes —
an engine makes only of the outcome batches it counts itself: a batch the writer counted
but whose acknowledgement was lost is sent again, to whichever replica leads then, whose
ledger (``server/outcome_ledger.py``) has not seen it. Taken from the record as well, its
failures would count twice — a successor would open the breaker below its threshold, a
leader restarted within its lease too. So each engine starts those counts afresh, as it
starts its ledger: failures the writer counted and had acknowledged count no more toward a
trip (the side that never counts one failure twice).

What a record says of how its state was reached — the failures that opened an OPEN (or
the OPEN before a HALF_OPEN), the slow calls — is kept: it is shown, and counts toward
nothing (a CLOSED breaker starts its counts from zero when it closes).
"""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb


def taken_counts(record: pb.Breaker) -> tuple[int, int]:
    """(consecutive_failures, half_open_successes) an engine takes from ``record``."""
    state = BreakerState(record.state)
    consecutive = 0 if state is BreakerState.CLOSED else record.consecutive_failures
    successes = 0 if state is BreakerState.HALF_OPEN else record.half_open_successes
    return consecutive, successes
