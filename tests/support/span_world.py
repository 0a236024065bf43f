"""One agent session moving between two followers and the leader, over real parts: each
follower's ``LeaderRelay`` (its held spans and the acknowledgements it owes, ``relay_acks``),
the leader's ``OutcomeLedger``, and the agent's own ``UnackedBatches`` (what it sends again,
marked, on each new stream). Only the wires are modelled, as steps a seeded schedule picks:
batches in transit on the agent's streams (a stream the agent left may still be read for a
while, even after its next stream opened), a follower's link to the leader going down and up,
the leader reading and acknowledging what a link carried (an acknowledgement lost with the
link), and the leader's acknowledgements to the agent itself lost with its stream.

Each batch carries one failure named by its number (``errors_by_type``), so the leader's
count of each is known: every failure reported must be counted exactly once.
"""

from __future__ import annotations

import collections
import itertools
import random
from dataclasses import dataclass, field

from mission_control.client.view import UnackedBatches
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import Hub
from mission_control.server.outcome_ledger import BatchKey, OutcomeLedger, batch_key
from mission_control.server.relay import LeaderRelay
from mission_control.server.relay_spans import HeldSpans

AGENT, SESSION = "a@1", "s"
_STREAM_IDS = itertools.count(1)


class Leadership:
    leading = False

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id


class Leader:
    """What the leader's engine counts: each batch its ledger takes, by failure."""

    def __init__(self) -> None:
        self.ledger = OutcomeLedger()
        self.counted: collections.Counter[int] = collections.Counter()
        #: Relay batches carrying a range (a follower merged batches), and those refused.
        self.ranges = 0
        self.refused = 0

    def take(self, key: BatchKey | None, summaries: list[pb.OutcomeSummary]) -> None:
        merged = key is not None and key.lowest < key.sequence
        self.ranges += merged
        if key is None or self.ledger.first_time(key):
            for summary in summaries:
                for name, n in summary.errors_by_type.items():
                    self.counted[int(name)] += n
        else:
            self.refused += merged


@dataclass(eq=False)
class Stream:
    """One of the agent's streams (to a follower: a hub subscriber taking acknowledgements)."""

    agent: Agent
    follower: Follower | None
    id: int = field(default_factory=lambda: next(_STREAM_IDS))
    live: bool = True
    #: Batches sent on it, not read yet by the replica.
    transit: collections.deque[pb.OutcomeBatch] = field(default_factory=collections.deque)

    def push(self, message: object) -> bool:
        if self.live and isinstance(message, pb.ConnectResponse) and message.HasField("outcome_ack"):
            self.agent.unacked.ack(message.outcome_ack.sequence)
        return True


class Follower:
    def __init__(self, name: str, keep_apart: int, block: int) -> None:
        self.relay = LeaderRelay(Leadership(name), Hub())  # type: ignore[arg-type]
        # (smaller than the deployed figures: a short schedule merges as a long spell would)
        self.relay._batches = HeldSpans(block=block, keep_apart=keep_apart)
        #: Relay batches on the link: [batch, read by the leader].
        self.link: list[list[object]] = []
        self.streams: list[Stream] = []

    def read(self, stream: Stream, count: int) -> None:
        """The follower reads ``count`` batches of ``stream`` (as ``service._outcomes``)."""
        for _ in range(min(count, len(stream.transit))):
            batch = stream.transit.popleft()
            key = batch_key(AGENT, SESSION, stream.agent.unacked.series, batch, replica=False)
            self.relay.add_batch(key, AGENT, list(batch.summaries), stream.id)
            self.relay.owe_ack(stream, batch.sequence)
        if not stream.live and not stream.transit:
            self.relay.stream_ended(stream)
            self.streams.remove(stream)

    def set_link(self, up: bool) -> None:
        relay = self.relay
        relay.connected = up
        if up:  # what the last link did not get acknowledged goes again, first
            self.link = [[batch, False] for batch in relay._unacked.resend()]
        else:
            self.link = []

    def flush(self) -> None:
        if self.relay.connected:
            self.link += [[request.outcomes, False] for request in self.relay._outgoing()]

    def deliver(self, leader: Leader, count: int) -> None:
        relay = self.relay
        for item in [item for item in self.link if not item[1]][:count]:
            batch = item[0]
            assert isinstance(batch, pb.OutcomeBatch)
            key = batch_key(relay.agent_id, relay.session_id, relay._unacked.series, batch, replica=True)
            leader.take(key, list(batch.summaries))
            item[1] = True

    def acknowledge(self) -> None:
        """The leader's acknowledgement of what it read comes back (as ``relay._stream``)."""
        read = [item for item in self.link if item[1]]
        if not read:
            return
        batch = read[-1][0]
        assert isinstance(batch, pb.OutcomeBatch)
        relay = self.relay
        relay._unacked.ack(batch.sequence)
        relay._batches.acked(batch.sequence)
        relay.acks.acked(batch.sequence)
        self.link = [item for item in self.link if not item[1]]


class Agent:
    def __init__(self, marks: bool = True) -> None:
        self.unacked = UnackedBatches(limit=10**6)
        self.marks = marks
        self.stream: Stream | None = None
        self.reported = 0

    def report(self) -> None:
        self.reported += 1
        summary = pb.OutcomeSummary(
            service="svc", failures=1, trailing_failures=1, errors_by_type={str(self.reported): 1}
        )
        self.send(self.unacked.batch([summary]))

    def send(self, batch: pb.OutcomeBatch) -> None:
        assert self.stream is not None
        self.stream.transit.append(batch)

    def move(self, to: Follower | None, leader: Leader, rnd: random.Random) -> None:
        """The stream breaks; one opens to ``to`` (None: the leader), and what was not
        acknowledged goes again on it."""
        old = self.stream
        if old is not None:
            old.live = False
            if rnd.random() < 0.5:  # lost on the way (the rest may still be read)
                for _ in range(rnd.randrange(len(old.transit) + 1)):
                    old.transit.pop()
            if old.follower is not None:
                old.follower.read(old, 0)
        self.stream = Stream(self, to)
        if to is not None:
            to.streams.append(self.stream)
        for batch in self.unacked.resend(marked=self.marks):
            self.send(batch)


def leader_reads(leader: Leader, stream: Stream, count: int, rnd: random.Random) -> None:
    """The leader reads ``count`` batches of the agent's stream to it: counts each its ledger
    has not, and acknowledges it (the acknowledgement may be lost: a later one covers it)."""
    for _ in range(min(count, len(stream.transit))):
        batch = stream.transit.popleft()
        key = BatchKey(AGENT, SESSION, stream.agent.unacked.series, batch.sequence)
        leader.take(key, list(batch.summaries))
        if rnd.random() < 0.95:
            stream.push(pb.ConnectResponse(outcome_ack=pb.OutcomeAck(sequence=batch.sequence)))


@dataclass
class Outcome:
    reported: int
    counted: collections.Counter[int]
    #: Ranges the leader was given, and refused.
    ranges: int
    refused: int

    @property
    def twice(self) -> list[int]:
        return sorted(n for n, times in self.counted.items() if times > 1)

    @property
    def lost(self) -> list[int]:
        return [n for n in range(1, self.reported + 1) if not self.counted[n]]


def run(seed: int, steps: int = 600, marks: bool = True, keep_apart: int = 4, block: int = 16) -> Outcome:
    """One seeded schedule, then every link healed: the agent sends again, to the leader,
    what it still holds unacknowledged."""
    rnd = random.Random(seed)
    leader = Leader()
    followers = [Follower("f1", keep_apart, block), Follower("f2", keep_apart, block)]
    for follower in followers:
        follower.set_link(rnd.random() < 0.5)
    agent = Agent(marks)
    places: list[Follower | None] = [*followers, None]
    at_leader: list[Stream] = []  # the agent's streams to the leader with batches unread

    def moved(to: Follower | None) -> None:
        agent.move(to, leader, rnd)
        if to is None:
            at_leader.append(agent.stream)  # type: ignore[arg-type]

    def read(count: int, stream: Stream | None = None) -> None:
        """The replica at one end of ``stream`` (default: any with batches unread) reads."""
        if stream is None:  # most often the stream the agent sends on now
            streams = [s for f in followers for s in f.streams] + [s for s in at_leader if s.transit]
            if not streams:
                return
            stream = agent.stream if rnd.random() < 0.7 else rnd.choice(streams)
        if stream.follower is None:
            leader_reads(leader, stream, count, rnd)
        else:
            stream.follower.read(stream, count)

    moved(rnd.choice(places))
    for _ in range(steps):
        r = rnd.random()
        follower = rnd.choice(followers)
        if r < 0.42:
            agent.report()
            if rnd.random() < 0.8:  # most often read at once
                read(10**6, agent.stream)
        elif r < 0.44:
            moved(rnd.choice(places))
        elif r < 0.45:  # a visit: elsewhere and back before reporting anything new
            back = agent.stream.follower  # type: ignore[union-attr]
            moved(rnd.choice(places))
            read(rnd.randrange(1, 200), agent.stream)
            moved(back)
        elif r < 0.47:  # links stay down long enough for spans to merge
            follower.set_link(not follower.relay.connected and rnd.random() < 0.3)
        elif r < 0.65:
            read(rnd.randrange(1, 8))
        elif r < 0.78:
            follower.flush()
        elif r < 0.90:
            follower.deliver(leader, rnd.randrange(1, 8))
        else:
            follower.acknowledge()
    # healed: every link up, everything read, passed on and acknowledged
    for follower in followers:
        if not follower.relay.connected:
            follower.set_link(True)
    for _ in range(4):
        for follower in followers:
            for stream in list(follower.streams):
                follower.read(stream, len(stream.transit))
        for stream in at_leader:
            leader_reads(leader, stream, len(stream.transit), rnd)
        for follower in followers:
            follower.flush()
            follower.deliver(leader, 10**6)
            follower.acknowledge()
    moved(None)
    leader_reads(leader, at_leader[-1], 10**6, rnd)
    return Outcome(agent.reported, leader.counted, leader.ranges, leader.refused)
