"""Which breakers the store is known to hold not CLOSED: what a leader may grant probe
permits for (I3 across a leader change).

A leader hands out probe permits from memory; a successor learns of them only through what
etcd holds, and waits out earlier permits for every breaker etcd holds not CLOSED
(``FleetBreakers.took_over``). A leader cut off from etcd can decide more than etcd holds:
while its leader lease still holds it may trip a breaker etcd has CLOSED (the OPEN cannot be
written), half-open it after a short wait and grant. Its successor loads CLOSED, trips and
half-opens the breaker itself and grants while the first probe may still run. Holding every
breaker after a takeover would close that, but blinds probing for the probe TTL plus the
policy's timeout after any start or failover.

So a leader grants only for a breaker whose current *run* — the stretch since it last left
CLOSED — the store is known to hold: a not-CLOSED record of this run was stored and
acknowledged (this replica's write) or read from the store (adopted). Why that is enough:

* every breaker write is a compare-and-swap on the revision held, so once a record of the
  run is acknowledged at revision R, an earlier write whose answer was lost can no longer
  land (it expects a revision below R), and the key changes after R only by a later
  compare-and-swap: this leader's own (a later state of the run, not CLOSED; or CLOSED,
  which ends the run, its HALF_OPEN and its grants), an operator's, or another leader's,
  which can only begin after this leader's lease expired in etcd — and this leader grants
  only while its lease is known to hold;
* so a leader that grants leaves etcd holding a not-CLOSED record, and its successor finds
  it at its takeover or when it first loads it: it waits the probe TTL plus the policy's
  timeout from then (``FleetBreakers.took_over``, ``FleetBreakers.adopt``), which covers
  every permit granted before.

Not covered: an operator's reset to CLOSED written through another replica while the leader
is cut off (CLOSED lets every agent call anyway), and an etcd that loses what it
acknowledged (wiped) while the leader dies before it noticed.

The cost: a breaker tripped while the leader cannot write goes HALF_OPEN on time but grants
no probe until etcd took a record of it (the pending write is retried every 0.5 s once etcd
is back); a breaker whose stored record was lost (a wipe noticed) grants none until the
leader has restored it.
"""

from __future__ import annotations

from mission_control.client.breaker import BreakerState


class StoredRuns:
    """Per breaker: which run it is in, and the run the store is known to hold."""

    def __init__(self) -> None:
        #: Counts each breaker's moves into and out of CLOSED: a run's number.
        self._run: dict[str, int] = {}
        #: The run of which the store is known to hold a not-CLOSED record.
        self._stored: dict[str, int] = {}

    def moved(self, name: str, old: BreakerState | None, new: BreakerState) -> None:
        """``name`` went from ``old`` to ``new`` (decided here, or read from the store)."""
        if old is not None and (old is BreakerState.CLOSED) != (new is BreakerState.CLOSED):
            self._run[name] = self._run.get(name, 0) + 1

    def run(self, name: str, state: BreakerState) -> int | None:
        """The run a record of ``name`` taken now (in ``state``) belongs to; None when it is
        CLOSED (a CLOSED record tells nothing a successor waits for)."""
        return None if state is BreakerState.CLOSED else self._run.get(name, 0)

    def stored(self, name: str, run: int | None) -> None:
        """The store took (or holds) a record of ``name`` from ``run`` (see :meth:`run`)."""
        if run is not None and run == self._run.get(name, 0):
            self._stored[name] = run

    def known(self, name: str) -> bool:
        """Whether the store is known to hold a not-CLOSED record of ``name``'s current run."""
        return name in self._stored and self._stored[name] == self._run.get(name, 0)

    def forget(self, name: str) -> None:
        self._run.pop(name, None)
        self._stored.pop(name, None)
