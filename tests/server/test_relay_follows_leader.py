"""A follower's link to the leader ends once the leader key names another replica, even
when the one it is linked to says nothing more: its requests end, and with them the stream.

A replica taken for the leader that is not (it follows, or it won the campaign and does
not lead yet) answers a relay a snapshot and then nothing: it acknowledges relayed batches
only once its own leader does. Its own relay, pointed back at the first, passes them on
there, and each batch goes round between the two for ever (simulated schedule 1096 at
version 2: 4,096 relay batches in 1.6 s, then the oldest summed without their names and
counted twice).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.hub import Hub
from mission_control.server.leadership import Leadership
from mission_control.server.relay import LeaderRelay
from mission_control.server.store import WatchEvent

OLD, NEW = "127.0.0.1:1001", "127.0.0.1:1002"


def name_leader(leadership: Leadership, instance: str, address: str, revision: int) -> None:
    """The leader key, as the watch delivers it, names ``address``."""
    value = json.dumps({"instance": instance, "address": address}).encode()
    leadership._seen([WatchEvent(leadership.key, value, revision, lease=7)])


async def wait_until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_link_to_a_replica_no_longer_named_leader_ends_though_it_answers_nothing() -> None:
    leadership = Leadership(store=None, prefix="/p", instance_id="r2", address="127.0.0.1:1003")  # type: ignore[arg-type]
    opened: list[str] = []
    ended: list[str] = []

    async def connect(
        address: str, requests: AsyncIterator[pb.ConnectRequest], metadata: object
    ) -> AsyncIterator[pb.ConnectResponse]:
        opened.append(address)
        requests_ended = asyncio.Event()

        async def read() -> None:
            async for _ in requests:
                pass
            requests_ended.set()

        reader = asyncio.create_task(read())
        try:
            yield pb.ConnectResponse(snapshot=pb.Snapshot())
            # nothing more (no acknowledgement, no grant); the stream ends when the relay's
            # requests end, as the servicer ends it
            await requests_ended.wait()
        finally:
            reader.cancel()
            ended.append(address)

    name_leader(leadership, "r1", OLD, 5)
    relay = LeaderRelay(leadership, Hub(), connect=connect)
    running = asyncio.create_task(relay.run())
    try:
        await wait_until(lambda: relay.connected and opened == [OLD])
        name_leader(leadership, "r3", NEW, 6)
        await wait_until(lambda: ended == [OLD] and opened[-1:] == [NEW])
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
