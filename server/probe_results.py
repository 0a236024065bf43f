"""Probe results tied to the grant they were made under.

An agent names, with each probe result, the grant (``ProbeGrant.number``) its probe ran
under (``OutcomeSummary.probe_grants``). A result counts only when that grant is a permit
this replica holds for the agent now, of the HALF_OPEN in force: the result of a probe begun
under a permit that went with the agent's broken stream counts for nothing — not for the
permit the agent got after it reconnected either, which its own probe still uses. Before,
results were bounded by how many permits the agent held, by count: such an earlier probe's
success settled the new permit and counted towards closing while the new probe still ran,
and the permits it seemed to free went out beside it (more than ``success_threshold``
probes in flight).

An agent back on a new stream also says which probes it still runs under grants of the
stream before (``OutcomeSummary.probes_running``): those count in flight, for no
HALF_OPEN, until their results come or their hold lapses (:meth:`.CircuitBreaker.note_running`).

Pure logic; the caller is the engine.
"""

from __future__ import annotations

from collections.abc import Collection

from mission_control.client.breaker import CircuitBreaker
from mission_control.resilience.v1 import control_plane_pb2 as pb

__all__ = [
    "MAX_RELEASED",
    "MAX_RUNNING",
    "copy_grants",
    "identified",
    "known_gone",
    "known_results",
    "lose_released",
    "note_running",
    "settle_results",
]

#: Probes running from before a reconnect read from one summary: an agent holds one permit
#: at a time, so a few cover any honest one (only grants this agent held are believed).
MAX_RUNNING = 8
#: Permits given back by grant read from one summary (a follower's relay names those of
#: all its agents; it sends more in further summaries).
MAX_RELEASED = 64


def identified(summary: pb.OutcomeSummary) -> bool:
    """Whether ``summary`` names the grant of each of its probe results."""
    results = summary.probe_failures + summary.probe_successes
    return bool(results) and len(summary.probe_grants) == results


def note_running(breaker: CircuitBreaker, agent: str, summary: pb.OutcomeSummary) -> None:
    """Count in flight the probes ``agent`` says it still runs from an earlier stream."""
    for number in summary.probes_running[:MAX_RUNNING]:
        breaker.note_running(agent, number)


def lose_released(breaker: CircuitBreaker, agent: str, summary: pb.OutcomeSummary) -> int:
    """Let go of the permits ``agent`` gives back by grant (``released_grants``): each is
    kept, counted for nothing, until its hold lapses or its holder names its probe as still
    running (:meth:`.CircuitBreaker.lose`). Returns how many it held."""
    return sum(breaker.lose(agent, number) for number in summary.released_grants[:MAX_RELEASED])


def settle_results(
    breaker: CircuitBreaker,
    agent: str,
    summary: pb.OutcomeSummary,
    current: bool,
    origin: str = "",
    relays_gone: Collection[str] = (),
) -> tuple[int, int]:
    """Settle each named result's permit; returns the (successes, failures) that count:
    those under a permit of this HALF_OPEN held for ``agent`` now (``current``: the
    summary's generation is the breaker's). A result a follower's relay ``agent`` passes on
    for ``origin`` under a grant not its own settles that grant if it was ``origin``'s own
    (granted here before the agent moved to that follower): the probe has ended, so its
    permit counts no longer; the result counts for nothing (its stream is gone).

    Else, a result under a permit held for a follower's relay whose streams here are gone
    (``relays_gone``: killed, or cut off) settles it, and counts as the relay's result
    would: the agent that probed under it moved here (or to another follower) and sent its
    batch again, and that relay may never pass its copy on. Should it come back and pass it
    on, the permit is settled already and its copy counts for nothing (late_results): once
    either way. Before, the permit stayed held until its hold lapsed (the TTL plus the
    policy's timeout), and the HALF_OPEN waited that long for a dead follower."""
    grants = summary.probe_grants
    failures = successes = 0
    for i, number in enumerate(grants):
        kind = breaker.settle(agent, number)
        if not kind and origin and origin != agent and breaker.settle(origin, number):
            kind = "origin"  # settled; counts for nothing
        if not kind:
            kind = _settle_gone(breaker, relays_gone, number)
        counts = kind == "current" and current
        if i < summary.probe_failures:
            failures += counts
        else:
            successes += counts
    return successes, failures


def known_results(breaker: CircuitBreaker, agent: str, summary: pb.OutcomeSummary) -> int:
    """How many of the named results are under a grant this replica knows for ``agent``
    (held now, counted in flight for none, or released with its stream): an honest
    agent's report of them is not cut as a claim beyond its permits. Each grant counts
    once however often it is named, and the work is one pass in C over the names: a
    summary naming hundreds of thousands of grants costs milliseconds, not the event
    loop's time for everyone else."""
    known = breaker.known_numbers(agent)
    return len(known.intersection(summary.probe_grants)) if known else 0


def copy_grants(summary: pb.OutcomeSummary, out: pb.OutcomeSummary) -> None:
    """Name in ``out`` (``summary`` with its probe results cut, or not) the grants of the
    results it kept, and at most :data:`MAX_RUNNING` probes running."""
    del out.probe_grants[:], out.probes_running[:]
    if identified(summary):
        failed = summary.probe_grants[: summary.probe_failures]
        succeeded = summary.probe_grants[summary.probe_failures :]
        out.probe_grants.extend(failed[: out.probe_failures])
        out.probe_grants.extend(succeeded[: out.probe_successes])
    out.probes_running.extend(summary.probes_running[:MAX_RUNNING])
    del out.released_grants[:]
    out.released_grants.extend(summary.released_grants[:MAX_RELEASED])


def _settle_gone(breaker: CircuitBreaker, relays_gone: Collection[str], number: int) -> str:
    """Settle grant ``number`` if it is a permit held for a relay gone; its kind ("": none)."""
    for relay in relays_gone:
        kind = breaker.settle(relay, number)
        if kind:
            return kind
    return ""


def known_gone(breaker: CircuitBreaker, relays_gone: Collection[str], summary: pb.OutcomeSummary) -> int:
    """How many of the named results are under a permit held for a relay gone (see
    :func:`settle_results`): not cut as a claim beyond the sender's permits."""
    return sum(known_results(breaker, relay, summary) for relay in relays_gone)
