"""I5 through the store: no engine counts a batch toward a trip that is already in its count.

``checks._counted_once`` sees what each engine counted of each batch, so it cannot see a
count one engine hands another: a breaker record written after its writer counted
failures carries them (``consecutive_failures``), and an engine that takes them from the
record and then counts the same batches again, sent once more because their
acknowledgement was lost, counts them twice toward one trip.

So each engine's count toward a trip (a CLOSED breaker's ``consecutive_failures``) is
followed here by what it is made of — failures per batch:

* counted by the engine (``CircuitBreaker.record`` while the engine counts a named batch):
  added, or, after a success in the batch, the batch's trailing failures alone;
* written into a record (``FleetBreakers.record_of``): the record's bytes remember it;
* read from a record (``FleetBreakers.adopt``): what the count now holds came from the
  writer, batch by batch (an unknown record: from no batch the simulation names);
* a count back at zero (a transition, an operator's reset, a fresh breaker): empty.

A batch whose failures in one engine's count come to more than it had is a violation.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mission_control.client.breaker import BreakerState, CircuitBreaker, Transition

from .names import BatchName, singles

if TYPE_CHECKING:
    from mission_control.server.engine import FleetBreakers

    from .schedule import World

#: How a violation of this check starts (checks.RESENT, with what it is about).
CARRIED = "I5: twice (through the store):"

Part = BatchName | tuple[str, int]


class TripCounts:
    """What each engine's count toward each breaker's trip is made of."""

    def __init__(self, world: World) -> None:
        self.world = world
        #: (instance, breaker) -> failures per batch in its consecutive_failures
        self.runs: dict[tuple[str, str], Counter[Part]] = {}
        #: a record's bytes -> what its consecutive_failures were made of
        self.records: dict[bytes, Counter[Part]] = {}
        self._unnamed = itertools.count()

    def attach(self, instance: str, engine: FleetBreakers) -> None:
        """Follow ``engine``'s records written and read."""
        record_of, adopt = engine.record_of, engine.adopt

        def recorded(breaker: CircuitBreaker) -> bytes:
            value = record_of(breaker)
            run = self.runs.get((instance, breaker.name))  # (a draft's too: not changed here)
            count = breaker.consecutive_failures
            if count and run is not None and sum(run.values()) == count:
                self.records[value] = Counter(run)
            return value

        def adopted(name: str, value: bytes | None, revision: int) -> None:
            held = engine.revisions.get(name, 0)
            adopt(name, value, revision)
            if value is not None and 0 < revision <= held:
                return  # not applied (already held)
            breaker = engine.find(name)
            count = breaker.consecutive_failures if breaker is not None else 0
            run = self.records.get(value, Counter()) if value is not None else Counter()
            if count and sum(run.values()) != count:
                run = Counter({("unknown record", next(self._unnamed)): count})
            self.runs[(instance, name)] = Counter(run) if count else Counter()

        engine.record_of = recorded  # type: ignore[method-assign]
        engine.adopt = adopted  # type: ignore[method-assign]

    @contextlib.contextmanager
    def counting(
        self, instance: str, engine: FleetBreakers, service: str, batch: BatchName | None
    ) -> Iterator[None]:
        """While ``engine`` counts ``batch`` (None: an unnamed one) for ``service``."""
        breaker = engine.get(service)
        record = breaker.record

        def tracked(
            now: float, successes: int, failures: int, trailing_failures: int | None = None
        ) -> Transition | None:
            closed = breaker.state is BreakerState.CLOSED
            run = self._run(instance, breaker)
            move = record(now, successes, failures, trailing_failures)
            if closed and (successes or failures):
                self._add(instance, breaker, run, batch, successes, failures, trailing_failures)
            return move

        breaker.record = tracked  # type: ignore[method-assign]
        try:
            yield
        finally:
            del breaker.record

    def _run(self, instance: str, breaker: CircuitBreaker) -> Counter[Part]:
        """The engine's run for ``breaker``, in step with its count (a count back at zero:
        empty; out of step: from no batch named)."""
        run = self.runs.setdefault((instance, breaker.name), Counter())
        count = breaker.consecutive_failures
        if sum(run.values()) != count:
            run.clear()
            if count:
                run[("unknown", next(self._unnamed))] = count
        return run

    def _add(
        self,
        instance: str,
        breaker: CircuitBreaker,
        run: Counter[Part],
        batch: BatchName | None,
        successes: int,
        failures: int,
        trailing_failures: int | None,
    ) -> None:
        parts: list[Part] = list(singles(batch)) if batch is not None else [("unnamed", next(self._unnamed))]
        if successes:
            trailing = failures if trailing_failures is None else min(trailing_failures, failures)
            run.clear()
            self._share(run, reversed(parts), trailing)  # the trailing ones: the last batches'
        else:
            self._share(run, parts, failures)
        world = self.world
        for part in parts:
            had = world.batches.get(part, 0) if len(part) == 4 else None  # type: ignore[call-overload]
            if had is not None and run[part] > had:
                world.recorder.violation(
                    "I5",
                    (instance, f"{breaker.name}/{part}"),
                    f"twice (through the store): {instance} counts {run[part]} failures of "
                    f"batch {part} toward {breaker.name}'s trip, which had {had}",
                )

    def _share(self, run: Counter[Part], parts: Iterator[Part] | list[Part], failures: int) -> None:
        """``failures`` of ``parts`` into ``run``: one batch takes them all; a range a relay
        merged, batch by batch as each had."""
        parts = list(parts)
        if len(parts) == 1:
            if failures:
                run[parts[0]] += failures
            return
        left = failures
        for part in parts:
            got = min(self.world.batches.get(part, 0), left)  # type: ignore[call-overload]
            if got:
                run[part] += got
            left -= got
        if left:
            run[("unnamed", next(self._unnamed))] += left
