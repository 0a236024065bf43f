"""How the simulation names outcome batches: one batch, or a range a relay merged."""

from __future__ import annotations

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.outcome_ledger import BatchKey, origin_key

#: One outcome batch: (agent, session, series, sequence); a range a relay merged:
#: (agent, session, series, last, first).
BatchName = tuple[str, str, str, int] | tuple[str, str, str, int, int]


def key_name(key: BatchKey) -> BatchName:
    if key.lowest < key.sequence:
        return key.agent_id, key.session_id, key.series, key.sequence, key.lowest
    return key.agent_id, key.session_id, key.series, key.sequence


def singles(name: BatchName) -> list[BatchName]:
    """The batches ``name`` covers."""
    if len(name) == 4:
        return [name]
    agent, session, series, last, first = name  # type: ignore[misc]
    return [(agent, session, series, sequence) for sequence in range(first, last + 1)]


def batch_name(agent_id: str, series: str, batch: pb.OutcomeBatch) -> BatchName:
    """Which batch this is: its origin when a relay passed it on, else the sender's (a
    simulated agent's session and series are its name)."""
    if agent_id.startswith("replica.") and batch.HasField("origin"):
        key = origin_key(batch.origin, batch.summaries)
        if key is not None:
            return key_name(key)
        origin = batch.origin
        return origin.agent_id, origin.session_id, origin.series, origin.sequence
    return agent_id, agent_id, series, batch.sequence
