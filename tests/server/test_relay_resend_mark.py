"""I5 across a leader that was deposed and leads again: a follower's relay sends again, on
its next link, the agent batches the leader never acknowledged, and the replica that takes
them may have counted them before.

Simulation seed 20189 (``python -m tests.sim_fleet --seed 20189``): cp1.4 led and counted
agent-3's batch 188, which cp0.5's relay passed on; the partition between them broke the
link before the acknowledgement came back, and cp1.4 lost its lease. Partition healed,
cp0.5 sent 188 again to cp1.4 — following now, with no leader to pass anything on to —
together with 189.. the agent had reported meanwhile. cp1.4 merged them into the range
188..191, refused it whole once it led again (it had counted 188) and acknowledged it: the
failures of 189..191 were counted by no engine. An agent marks what it sends again so
that a follower keeps it apart (``relay_spans``); the relay sent its own again unmarked.
"""

from __future__ import annotations

import asyncio

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import Hub
from mission_control.server.outcome_ledger import BatchKey, OutcomeLedger, batch_key
from mission_control.server.relay import LeaderRelay

from tests.server.test_relay_spans import failed, key, leader_counts, relayed

#: Batches the agent reports while the relay's link is down (no more than a relay keeps
#: apart: it merges none of them itself), then after it is back.
DOWN, AFTER = 32, 8


class Following:
    """A replica's view of who leads: another replica, at ``leader_address``."""

    leading = False
    leader_address = "cp1"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id


def taken_by(follower: LeaderRelay, request: pb.ConnectRequest) -> None:
    """``request`` of relay ``replica.cp0`` reaches ``follower`` (as ``server/service.py``
    hands a relayed batch on while its replica follows)."""
    if request.WhichOneof("message") != "outcomes":
        return
    batch = request.outcomes
    name = batch_key("replica.cp0", "r", "rs", batch, replica=True)
    assert name is not None
    follower.add_batch(name, "replica.cp0", list(batch.summaries), stream=1)


async def test_batches_a_relay_sends_again_join_no_range_of_a_replica_that_counted_them() -> None:
    relay = LeaderRelay(Following("cp0"), Hub())  # type: ignore[arg-type]
    relay.connected = True
    ledger = OutcomeLedger()  # cp1's, kept through its terms
    relay.add_batch(key(1), "a", failed())
    assert leader_counts(ledger, relayed(relay._outgoing())) == 1  # cp1 leads: counted
    # the acknowledgement is lost with the link; the agent goes on reporting
    relay.connected = False
    for sequence in range(2, 2 + DOWN):
        relay.add_batch(key(sequence), "a", failed())
    # cp1, deposed meanwhile, follows (no leader to pass on to) when the link comes back
    deposed = LeaderRelay(Following("cp1"), Hub())  # type: ignore[arg-type]
    relay._epoch, relay._resend, relay.connected = 1, True, True
    requests = relay._requests(1, "cp1")

    async def link() -> None:
        async for request in requests:
            taken_by(deposed, request)

    task = asyncio.create_task(link())
    try:
        last = 1 + DOWN + AFTER
        for sequence in range(2 + DOWN, last + 1):
            relay.add_batch(key(sequence), "a", failed())
        deadline = asyncio.get_running_loop().time() + 10.0
        while not deposed._batches.holds(BatchKey("a", "s", "x", last)):
            assert asyncio.get_running_loop().time() < deadline, "the relay passed on its batches"
            await asyncio.sleep(0.01)
    finally:
        relay._epoch += 1  # a newer link: this one ends
        relay._wake.set()
        await asyncio.wait_for(task, 10.0)
    # cp1 leads again: what it held counts, but batch 1 (counted) not twice
    assert leader_counts(ledger, deposed.drain()) == DOWN + AFTER
