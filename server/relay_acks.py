"""The acknowledgements a follower owes its agents' streams until the leader has their batches.

A follower passes each agent batch on to the leader in a batch of its own (numbered by the
relay). Acknowledging the agent at once would let a follower that dies before the leader
took the batch lose it: the agent sends again only what was not acknowledged. So the agent's
``outcome_ack`` waits until the leader acknowledged every relay batch sent up to the one that
carried it (the leader's acknowledgements, like an agent's, are cumulative).

Each flush of the relay is a round: the streams owed an acknowledgement, each with its highest
sequence, and the highest relay sequence sent so far. A round is settled once the leader
acknowledged that sequence. Memory is bounded: per round one entry per stream, and past
``max_rounds`` the two oldest rounds are merged (the merged round waits for the later of the
two: an acknowledgement may come later, never early). A stream that ended is forgotten.
"""

from __future__ import annotations

import collections
from typing import Protocol

from mission_control.resilience.v1 import control_plane_pb2 as pb

#: Rounds kept while the leader has not acknowledged them (about 5 s of 20 ms flushes).
MAX_ROUNDS = 256


class AckTarget(Protocol):
    """An agent's stream (a hub subscriber): takes the acknowledgement when it is due."""

    def push(self, message: object) -> bool: ...


class OwedAcks:
    """Acknowledgements owed to agents' streams, settled by the leader's acknowledgements."""

    def __init__(self, max_rounds: int = MAX_ROUNDS) -> None:
        self.max_rounds = max(1, max_rounds)
        #: Owed for batches not sent to the leader yet: stream -> its highest sequence.
        self._unsent: dict[AckTarget, int] = {}
        #: (highest relay sequence sent, stream -> its highest sequence), oldest first.
        self._rounds: collections.deque[tuple[int, dict[AckTarget, int]]] = collections.deque()
        #: The highest relay sequence the leader acknowledged.
        self._acked = 0

    def __len__(self) -> int:
        """Acknowledgements owed (a stream counts once per round)."""
        return len(self._unsent) + sum(len(owed) for _, owed in self._rounds)

    def owe(self, stream: AckTarget, sequence: int) -> None:
        """``stream``'s batch ``sequence`` went to the relay: acknowledge it once the leader
        has it (and with it, cumulatively, the stream's batches before it)."""
        if sequence > self._unsent.get(stream, 0):
            self._unsent[stream] = sequence

    def sent(self, last_sequence: int) -> None:
        """Every batch owed so far is in relay batches numbered ``last_sequence`` or lower."""
        if not self._unsent:
            return
        owed, self._unsent = self._unsent, {}
        self._rounds.append((last_sequence, owed))
        if len(self._rounds) > self.max_rounds:
            _, oldest = self._rounds.popleft()
            later = self._rounds[0][1]
            for stream, sequence in oldest.items():
                later[stream] = max(later.get(stream, 0), sequence)
        self._settle()

    def acked(self, sequence: int) -> None:
        """The leader acknowledged relay batches up to ``sequence``."""
        self._acked = max(self._acked, sequence)
        self._settle()

    def forget(self, stream: AckTarget) -> None:
        """``stream`` ended: its agent sends again what it saw no acknowledgement for."""
        self._unsent.pop(stream, None)
        for _, owed in self._rounds:
            owed.pop(stream, None)

    def release_all(self) -> None:
        """Acknowledge everything owed (this replica counted it itself: it leads now)."""
        rounds = [owed for _, owed in self._rounds] + [self._unsent]
        self._rounds.clear()
        self._unsent = {}
        for owed in rounds:
            _push(owed)

    def _settle(self) -> None:
        while self._rounds and self._rounds[0][0] <= self._acked:
            _, owed = self._rounds.popleft()
            _push(owed)


def _push(owed: dict[AckTarget, int]) -> None:
    for stream, sequence in owed.items():
        stream.push(pb.ConnectResponse(outcome_ack=pb.OutcomeAck(sequence=sequence)))
