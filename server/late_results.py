"""Probe results in a batch the leader counted already, passed on by a follower's relay.

A follower cut off from the leader takes its agents' batches and keeps them for the leader;
a probe result among them counts only under a grant relayed to that agent
(``relay_permits``), which the leader holds for the relay. Should the agent move to another
replica meanwhile, it sends the batch again there; that copy may reach the leader first. While
the relay's stream is up, the leader counts the batch then, but not its probe result: the
permit is the relay's, not the agent's, and an agent cannot show which relayed grant was its
own (grant numbers follow one another). When the relay's copy comes, the batch is one counted
already; before, it was dropped whole, the permit stayed held until its hold lapsed (the TTL
plus the policy's timeout), and an agent asking for a permit meanwhile got none (I3).

Of such a copy the leader takes the probe part alone: the named results and the permits
given back by grant. Each settles the permit of its grant held for the relay, and counts
only if it still held it, so a result counts once whichever copy came first (I5): the
relay's first copy, or this one after the agent's was cut. Unnamed results are not taken
(nothing tells whether the first copy counted them). The calls of the batch are not
counted again.

A relay whose streams to the leader have ended (cut off, or killed: it may never pass its
copy on) is another matter: the agent's own copy then settles the permit held for it and
counts (``probe_results.settle_results``), and the relay's copy, should it come back,
finds the permit settled.
"""

from __future__ import annotations

from collections.abc import Iterable

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .probe_results import MAX_RELEASED, identified

__all__ = ["probe_parts"]


def probe_parts(summaries: Iterable[pb.OutcomeSummary]) -> list[pb.OutcomeSummary]:
    """The named probe results and give-backs by grant of ``summaries``, one summary per
    summary that has any."""
    out = []
    for summary in summaries:
        named = identified(summary)
        if not named and not summary.released_grants:
            continue
        part = pb.OutcomeSummary(service=summary.service, probe_generation=summary.probe_generation)
        if named:
            part.probe_failures, part.probe_successes = summary.probe_failures, summary.probe_successes
            part.probe_grants.extend(summary.probe_grants)
        part.released_grants.extend(summary.released_grants[:MAX_RELEASED])
        out.append(part)
    return out
