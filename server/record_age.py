"""Whether a breaker record the store holds is older than the state held, after the store
lost its data (a backup restored, a wipe): the held state is then live truth and written over
it (``StateWriter.restore``), and the load does not adopt it (``StoreSync.apply``).

Every transition counts a breaker's generation up by one, so a lower generation is an older
record. The same generation is not always the same state: a breaker forgotten (idle, no
policy names it) whose marks are gone, or one first decided by a replica started since,
counts its generations over from 0, and a backup taken before holds the earlier run's
records at the same numbers (an OPEN at generation 2 the held run, at generation 2, has
since moved out of, or began later). Within one generation the time of the transition
(``changed_at``, wall clock, persisted) tells the runs apart: a record of the very
transition held carries its time (read back through a replica's clock offset, within
:data:`SLACK_NS`); one of an earlier run, an earlier time.
"""

from __future__ import annotations

from google.protobuf import json_format
from mission_control.resilience.v1 import control_plane_pb2 as pb

#: How far a record of the very transition held may be from the held time (float rounding
#: of a wall time read back through a replica's monotonic clock): far below any two
#: transitions of one breaker.
SLACK_NS = 1_000_000


def read_record(value: bytes | None) -> pb.Breaker | None:
    """A breaker record (None: no record, or not readable)."""
    if value is None:
        return None
    try:
        return json_format.Parse(value, pb.Breaker(), ignore_unknown_fields=True)
    except Exception:  # any broken record
        return None


def stored_generation(value: bytes | None) -> int | None:
    """The generation a breaker record holds (None: no record, or not readable)."""
    record = read_record(value)
    return None if record is None else record.generation


def older_than_held(stored: bytes | None, held: bytes | None) -> bool:
    """Whether the ``stored`` record is of an earlier state than the ``held`` one: a lower
    generation, or the same one reached earlier (by more than :data:`SLACK_NS`). False
    when either is absent or unreadable (left alone)."""
    old, new = read_record(stored), read_record(held)
    if old is None or new is None:
        return False
    if old.generation != new.generation:
        return old.generation < new.generation
    return old.changed_at.ToNanoseconds() < new.changed_at.ToNanoseconds() - SLACK_NS
