"""Breaker records this replica sent whose answer did not come: they may have been stored.

A write to etcd that is not answered within the store's bound (etcd slow) may still be
applied. The writer then tries again, expecting the revision it held before, and loses the
compare-and-swap to its own earlier write. That stored record is not a change made
elsewhere: it is a state this replica decided and has since moved on from (a failed probe's
OPEN, then the next HALF_OPEN). Adopting it as another replica's decision takes the breaker
back to an older state (losing the newer decision) and treats a HALF_OPEN this replica
decided as one whose permits were granted elsewhere, holding probes for the probe TTL plus
the policy's timeout.

So the writer keeps the records it sent until a write of the breaker is answered, and a
conflict whose stored record is one of them (the same bytes: the same generation, state,
reason and times) is taken as this replica's write, stored at the revision etcd names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Records kept per breaker: each try not answered adds its record, unless the same one
#: was sent already (a try again of the same state while etcd is away); the oldest go first.
KEPT = 32


@dataclass
class UnansweredWrites:
    """Per breaker: the records sent and not answered, each with the run it was taken in."""

    _sent: dict[str, list[tuple[bytes, int | None]]] = field(default_factory=dict)

    def sent(self, name: str, record: bytes, run: int | None) -> None:
        """A record of ``name`` goes to the store (kept until a write of it is answered)."""
        sent = self._sent.setdefault(name, [])
        if (record, run) not in sent:
            sent.append((record, run))
            del sent[:-KEPT]

    def answered(self, name: str) -> None:
        """A write of ``name`` was answered: no record sent before can land any more (it
        expected a revision the store has moved past, or was the one answered)."""
        self._sent.pop(name, None)

    def own(self, name: str, stored: bytes | None) -> tuple[bool, int | None]:
        """Whether ``stored`` is a record of ``name`` this replica sent (and its run)."""
        for record, run in reversed(self._sent.get(name, ())):
            if stored is not None and record == stored:
                return True, run
        return False, None
