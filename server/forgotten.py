"""Breakers forgotten here (idle ones no policy names), as the store held them then.

Forgetting an idle breaker drops it from memory and deletes its stored key. What is kept
of it, bounded, is where it stood:

* its revision: a watch event at or below it, of a write made before and on its way when
  the breaker was dropped, does not bring it back (``FleetBreakers.forgotten_at``);
* the generation its record holds: together with the revision it names that very record.
  The deletion may fail (etcd away, leadership lost): the record stays in the store, and
  the writer's compare-and-swap of a state decided after a new report, expecting the key
  absent, meets it. Nobody wrote it since (its revision is the one forgotten), so it is
  not a change made elsewhere: the state decided here is written over it
  (``FleetBreakers.resumed``), not dropped for it;
* the highest generation agents were told of it: a breaker started over after a report
  counts on from there, so a state decided then never reuses a number agents (or the
  record left in the store) hold for an earlier state.

An old mark lost (past :data:`FORGOTTEN_KEPT`) lets a stale CLOSED back in, to be forgotten
again; a new state decided then starts its generations over.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import json_format
from mission_control.resilience.v1 import control_plane_pb2 as pb

#: How many forgotten breakers' marks are kept.
FORGOTTEN_KEPT = 4096


@dataclass(frozen=True, slots=True)
class Forgotten:
    """Where a breaker stood when it was forgotten."""

    #: The mod revision of its stored record.
    revision: int
    #: The generation of the breaker held then (that of its record).
    generation: int
    #: The highest generation told to agents.
    told: int


class ForgottenBreakers:
    """name -> :class:`Forgotten`, the newest :data:`FORGOTTEN_KEPT` kept."""

    def __init__(self, kept: int = FORGOTTEN_KEPT) -> None:
        self._kept = kept
        self._marks: dict[str, Forgotten] = {}

    def add(self, name: str, mark: Forgotten) -> None:
        self._marks.pop(name, None)  # the newest last: the oldest go first
        self._marks[name] = mark
        while len(self._marks) > self._kept:
            del self._marks[next(iter(self._marks))]

    def get(self, name: str) -> Forgotten | None:
        return self._marks.get(name)

    def pop(self, name: str) -> Forgotten | None:
        return self._marks.pop(name, None)

    def revision(self, name: str) -> int:
        """The revision ``name`` was forgotten at (0: no mark kept)."""
        mark = self._marks.get(name)
        return mark.revision if mark is not None else 0

    def left_behind(self, name: str, value: bytes, revision: int) -> bool:
        """Whether ``value`` at ``revision`` is the very record ``name`` was forgotten at
        (its deletion failed and nobody wrote the key since): its revision and generation,
        and CLOSED, as only a CLOSED breaker is forgotten."""
        mark = self._marks.get(name)
        if mark is None or revision != mark.revision:
            return False
        try:
            record = json_format.Parse(value, pb.Breaker(), ignore_unknown_fields=True)
        except Exception:  # any broken record: not the one written here
            return False
        return record.generation == mark.generation and record.state == pb.BREAKER_STATE_CLOSED

    def clear(self) -> None:
        self._marks.clear()

    def __len__(self) -> int:
        return len(self._marks)

    def __contains__(self, name: object) -> bool:
        return name in self._marks
