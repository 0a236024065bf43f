"""The agent batches a follower holds for the leader, merged per agent session into spans.

While the leader cannot take them (no leader during a failover, or a link that stalled) a
follower's agents go on reporting: a busy agent sends a batch every few tens of
milliseconds. Each batch kept on its own would fill any bound within seconds, and summing
the oldest without their names would count them twice once their agent sends them again
(it does, over whichever replica it reaches, until a leader acknowledged them). So, while
they cannot go up at once, the batches of one session that follow each other are merged
into one span — their sequences ``first``..``last`` and their outcomes summed — which the
leader counts whole or not at all (``outcome_ledger``): when it counted any batch of it
before, none of it, and each batch of it counts when the agent sends it again. A session's
newest ``KEEP_APART`` batches stay apart, and a span covers at most the ``BLOCK`` batches of
one block (never crossing a multiple of ``BLOCK``): what is held grows with the sessions and
the length of the spell, ~37 spans per busy agent over 30 s, not with every batch.

A span takes the batches that came on one of the agent's streams here, never those of two.
So when the leader refuses a range because it counted a batch of it before, that batch
reached it another way — the agent, that stream broken, sent it again on another stream —
and with it every batch of the range: it had seen none acknowledged. The leader's
acknowledgement of the relay's batch says nothing of what it refused (acknowledgements are
cumulative), but the follower owes it to no live stream: it acknowledges an agent's batch
only once the leader acknowledged what carried it, and forgets what it owed a stream that
ended (``relay_acks``). A batch the agent sends again here is passed over only when held as
it is; one held only inside a range is held again on its own, so it counts when the leader
refuses the range. The agent marks what it sends again (``OutcomeSummary.origin_first``):
another replica may have passed it on already, so a follower keeps each apart and merges
nothing more into what it holds of that session — else a range joining it to the new
batches after it would be refused whole and take them along. A relay marks likewise each
agent batch it passes on again on its next link: the replica it reaches may have counted
it while leading, and leads again once it has merged it (``LeaderRelay._sent_again``).

What may still go uncounted: the batches of a range the leader refuses, sent by an older
agent that does not mark what it sends again (its batches sent again merge with the new
ones after them on the same stream). And past ``MAX_SPANS`` spans the session with the most
first gives up a batch it holds both on its own and inside a range (``spared``: the range
counts it, unless the leader refuses that range; an agent that sent a long spell again to
its follower holds that many more spans), else has its two oldest merged (a gap between
them, and two streams, included; one inside the other is given up, never summed twice);
when every session has one, the oldest session's span is given up (``dropped``). Nothing is
counted twice. That is the safe side for breakers: one that opens a little late costs some
failed calls, which every agent's own breaker bounds anyway; one opened by failures counted
twice stops a healthy service for the whole fleet.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from mission_control.client.view import Tally
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .outcome_ledger import BatchKey

#: Batches a span may merge (and the blocks a span stays within).
BLOCK = 128
#: A session's newest batches are kept apart (not merged): a short spell without a leader
#: merges nothing, and what an agent sent again after moving between replicas during one
#: is most often among them.
KEEP_APART = 32
#: Spans held, unsent: ~37 per busy agent over a 30-s failover (32 + one per block).
MAX_SPANS = 16_384
#: Sessions whose batches acknowledged by the leader are remembered.
MAX_TAKEN = 16_384
#: Ranges acknowledged remembered per session (the newest): one forgotten is passed on again
#: when its agent sends it again, and the leader's ledger counts it once.
MAX_TAKEN_RANGES = 64

Session = tuple[str, str, str]


@dataclass
class Span:
    """Batches ``first``..``last`` of one agent session, not sent to the leader yet."""

    agent_id: str
    first: int
    last: int
    #: As given, while the span is one batch (or one range given by another replica).
    summaries: list[pb.OutcomeSummary]
    #: Summed by service once batches are merged.
    tallies: dict[str, Tally] | None = None
    #: Whether it may take the next batches (a range given whole may not).
    open: bool = True
    batches: int = field(default=1)
    #: The agent's stream its batches came on: a span takes batches of that stream only.
    stream: int = 0
    #: A batch sent again that a range held here holds too (it counts on its own only when
    #: the leader refuses that range): given up first past the bound.
    spare: bool = False

    def merge(self, last: int, summaries: list[pb.OutcomeSummary], batches: int = 1) -> None:
        if self.tallies is None:
            self.tallies = {}
            self._add(self.summaries)
            self.summaries = []
        self._add(summaries)
        self.last = last
        self.batches += batches

    def _add(self, summaries: list[pb.OutcomeSummary]) -> None:
        assert self.tallies is not None
        for summary in summaries:
            self.tallies.setdefault(summary.service, Tally()).merge(summary)

    def outcomes(self) -> list[pb.OutcomeSummary]:
        if self.tallies is None:
            return self.summaries
        return [t.to_proto(name) for name, t in self.tallies.items() if not t.empty()]


class HeldSpans:
    """Agent batches held for the leader (unsent), and the ranges sent but not acknowledged."""

    def __init__(self, max_spans: int = MAX_SPANS, block: int = BLOCK, keep_apart: int = KEEP_APART) -> None:
        self.max_spans = max(1, max_spans)
        self.block = max(1, block)
        self.keep_apart = max(0, keep_apart)
        #: Unsent spans by session, oldest session first.
        self._unsent: collections.OrderedDict[Session, list[Span]] = collections.OrderedDict()
        self._count = 0
        #: Ranges sent, by session: (first, last, relay sequence), until acknowledged.
        self._sent: dict[Session, list[tuple[int, int, int]]] = {}
        self._sent_order: collections.deque[tuple[int, Session]] = collections.deque()
        #: Per session, the batches (ranges) the leader acknowledged through this relay: an
        #: agent whose stream broke before the acknowledgement came sends them again. Not a
        #: highest batch: an agent sends a batch again after newer ones (its stream to
        #: another replica broke first), and the leader's word on the newer is none on it.
        self._taken: collections.OrderedDict[Session, list[tuple[int, int]]] = collections.OrderedDict()
        #: Batches given up past the bound (not passed on).
        self.dropped = 0
        #: Batches sent again given up past the bound while a range held here holds them.
        self.spared = 0

    def __len__(self) -> int:
        """Spans held unsent."""
        return self._count

    def holds(self, key: BatchKey, *, alone: bool = False) -> bool:
        """Whether every batch ``key`` names is held already (unsent, sent or acknowledged
        by the leader); ``alone``: only when held as it is, not inside a range — the leader
        may refuse that range (it counted another batch of it), leaving this one to count
        when it comes again."""
        name = (key.agent_id, key.session_id, key.series)
        low, high = key.lowest, key.sequence
        ranges = list(self._taken.get(name, ()))
        ranges += [(s.first, s.last) for s in self._unsent.get(name, ())]
        ranges += [(first, last) for first, last, _ in self._sent.get(name, ())]
        if alone:
            return (low, high) in ranges
        return any(first <= low and high <= last for first, last in ranges)

    def close(self, key: BatchKey) -> None:
        """Merge nothing more into what is held of ``key``'s session (its agent sends again
        what it sent before: what follows is new)."""
        for span in self._unsent.get((key.agent_id, key.session_id, key.series), ()):
            span.open = False

    def add(
        self,
        key: BatchKey,
        agent_id: str,
        summaries: list[pb.OutcomeSummary],
        *,
        merge: bool = True,
        apart: bool = False,
        stream: int = 0,
        spare: bool = False,
    ) -> None:
        """Hold batch (or range) ``key`` (not held yet: see :meth:`holds`), which came on the
        agent's ``stream``; ``merge``: with the batch before it when that came on the same
        stream (else on its own, as long as the bound allows); ``spare``: a batch sent again
        that a range held here holds too."""
        name = (key.agent_id, key.session_id, key.series)
        spans = self._unsent.get(name)
        if spans is None:
            spans = self._unsent[name] = []
        self._unsent.move_to_end(name)
        single = key.lowest == key.sequence
        spans.append(
            Span(
                agent_id,
                key.lowest,
                key.sequence,
                summaries,
                open=single and not apart,
                stream=stream,
                spare=spare,
            )
        )
        self._count += 1
        if merge and len(spans) > self.keep_apart + 1:
            # the newest batch past those kept apart joins the span before it, if it follows it
            at = len(spans) - self.keep_apart - 1
            before, span = spans[at - 1], spans[at]
            if (
                before.open
                and span.open
                and before.stream == span.stream
                and span.first == span.last == before.last + 1
                and self._block(before.first) == self._block(span.last)
            ):
                before.merge(span.last, span.outcomes(), span.batches)
                del spans[at]
                self._count -= 1
        while self._count > self.max_spans:
            self._make_room()

    def _block(self, sequence: int) -> int:
        return (sequence - 1) // self.block

    def _make_room(self) -> None:
        name, spans = max(self._unsent.items(), key=lambda item: len(item[1]))
        spare = next((at for at, span in enumerate(spans) if span.spare), None)
        if spare is not None:
            # the range holding it too counts it, unless the leader refuses that range
            del spans[spare]
            self.spared += 1
            if not spans:
                del self._unsent[name]
        elif len(spans) >= 2:
            spans.sort(key=lambda s: (s.first, -s.last))
            older, newer = spans[0], spans.pop(1)
            if newer.first <= older.last:
                # a batch held again on its own inside the range before it: summed into
                # that range it would count twice; given up (it counts with the range,
                # unless the leader refuses that)
                self.dropped += newer.batches
            else:
                older.merge(newer.last, newer.outcomes(), newer.batches)
                older.first, older.open = min(older.first, newer.first), False
        else:
            name, spans = next(iter(self._unsent.items()))
            self.dropped += spans.pop(0).batches
            if not spans:
                del self._unsent[name]
        self._count -= 1

    def take(self, limit: int | None = None) -> list[tuple[BatchKey, str, list[pb.OutcomeSummary]]]:
        """Up to ``limit`` spans held (all: None), oldest session first, each as a key (a
        range when merged), its agent and its outcomes; they are no longer held."""
        out: list[tuple[BatchKey, str, list[pb.OutcomeSummary]]] = []
        while self._unsent and (limit is None or len(out) < limit):
            name, spans = next(iter(self._unsent.items()))
            span = spans.pop(0)
            if not spans:
                del self._unsent[name]
            self._count -= 1
            first = span.first if span.first < span.last else 0
            out.append((BatchKey(*name, span.last, first), span.agent_id, span.outcomes()))
        return out

    def sent(self, key: BatchKey, sequence: int) -> None:
        """``key`` went to the leader in the relay's batch ``sequence``."""
        name = (key.agent_id, key.session_id, key.series)
        self._sent.setdefault(name, []).append((key.lowest, key.sequence, sequence))
        self._sent_order.append((sequence, name))

    def acked(self, sequence: int) -> None:
        """The leader acknowledged the relay's batches up to ``sequence``."""
        order = self._sent_order
        while order and order[0][0] <= sequence:
            _, name = order.popleft()
            ranges = self._sent.get(name, ())
            kept = [r for r in ranges if r[2] > sequence]
            acked = [(first, last) for first, last, at in ranges if at <= sequence]
            if acked:
                taken = self._taken.setdefault(name, [])
                taken.extend(acked)
                del taken[:-MAX_TAKEN_RANGES]
                self._taken.move_to_end(name)
                if len(self._taken) > MAX_TAKEN:
                    self._taken.popitem(last=False)
            if kept:
                self._sent[name] = kept
            else:
                self._sent.pop(name, None)
