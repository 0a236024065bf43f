"""A snapshot is built a slice of breakers at a time (``server/snapshot_build.py``): the loop
turns while it is built, and a breaker changed meanwhile reaches the agent in the snapshot or
in a push after it, never lost; the agent still gets one snapshot that replaces what it held.

Real control plane (gRPC on a free port, the session's etcd), real Connect streams; one
breaker per slice, so that a build of 120 breakers takes hundreds of turns of the loop."""

from __future__ import annotations

import asyncio

from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.app import RunningControlPlane
from mission_control.server.control_plane import ControlPlane

from tests.support.agents import RawAgent

COUNT = 120
FIRST, LAST = "svc-000", f"svc-{COUNT - 1:03d}"
OPENING = pb.OutcomeSummary(failures=5, trailing_failures=5)  # the default policy's threshold


def fold(received: list[pb.ConnectResponse]) -> dict[str, int]:
    """The agent's view after ``received``, in order: a snapshot replaces every breaker."""
    view: dict[str, int] = {}
    for response in received:
        if response.HasField("snapshot"):
            view = {b.name: b.state for b in response.snapshot.breakers}
        elif response.HasField("breaker"):
            view[response.breaker.name] = response.breaker.state
    return view


def open_breaker(plane: ControlPlane, name: str) -> None:
    summary = pb.OutcomeSummary()
    summary.CopyFrom(OPENING)
    summary.service = name
    plane.count_batch(None, "reporter", [summary])
    assert plane.breakers.to_proto(name).state == pb.BREAKER_STATE_OPEN


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def many_breakers(plane: ControlPlane) -> None:
    for i in range(COUNT):
        plane.breakers.get(f"svc-{i:03d}")
    plane.snapshot_slice = 1


async def test_a_breaker_changed_while_a_new_streams_snapshot_is_built_reaches_it(
    control_plane: RunningControlPlane,
) -> None:
    plane = control_plane.plane
    await many_breakers(plane)
    agent = RawAgent(f"127.0.0.1:{control_plane.port}", "watcher")
    entered = asyncio.create_task(agent.__aenter__())
    try:
        while not plane.hub.agents:  # its stream is in the hub: its snapshot is being built
            await asyncio.sleep(0)
        await turns(20)  # the first slices are built (of 2 x 120 steps)
        open_breaker(plane, FIRST)  # built already: the snapshot has it CLOSED
        open_breaker(plane, LAST)  # not built yet: the snapshot has it OPEN
        await entered
        snapshot = next(r.snapshot for r in agent.received if r.HasField("snapshot"))
        states = {b.name: b.state for b in snapshot.breakers}
        assert len(states) == COUNT
        # the loop turned while it was built: one breaker changed before its slice, one after
        assert states[FIRST] == pb.BREAKER_STATE_CLOSED
        assert states[LAST] == pb.BREAKER_STATE_OPEN
        await agent.wait_for(lambda: fold(agent.received).get(FIRST) == pb.BREAKER_STATE_OPEN)
        view = fold(agent.received)
        assert view[LAST] == pb.BREAKER_STATE_OPEN
        assert sum(1 for state in view.values() if state == pb.BREAKER_STATE_CLOSED) == COUNT - 2
    finally:
        await agent.__aexit__(None, None, None)


async def test_a_breaker_changed_while_a_snapshot_for_every_stream_is_built_is_pushed_after_it(
    control_plane: RunningControlPlane,
) -> None:
    plane = control_plane.plane
    await many_breakers(plane)
    async with RawAgent(f"127.0.0.1:{control_plane.port}", "watcher") as agent:
        before = len(agent.received)
        plane.version += 1
        plane._loaded()  # what a reload of the store ends with: a snapshot to every agent
        await turns(20)
        open_breaker(plane, FIRST)
        open_breaker(plane, LAST)
        await agent.wait_for(lambda: sum(1 for r in agent.received[before:] if r.HasField("snapshot")) == 1)
        later = agent.received[before:]
        at = next(i for i, r in enumerate(later) if r.HasField("snapshot"))
        states = {b.name: b.state for b in later[at].snapshot.breakers}
        assert states[FIRST] == pb.BREAKER_STATE_CLOSED
        assert states[LAST] == pb.BREAKER_STATE_OPEN
        # the push of FIRST made during the build comes after the snapshot, not before it
        await agent.wait_for(lambda: fold(agent.received).get(FIRST) == pb.BREAKER_STATE_OPEN)
        pushed = [i for i, r in enumerate(agent.received[before:]) if r.breaker.name == FIRST]
        assert pushed and min(pushed) > at
        assert fold(agent.received)[LAST] == pb.BREAKER_STATE_OPEN


async def test_a_snapshot_built_in_slices_is_the_one_built_at_once(
    control_plane: RunningControlPlane,
) -> None:
    plane = control_plane.plane
    await many_breakers(plane)
    for name in ("svc-007", "svc-100"):
        open_breaker(plane, name)
    assert await plane.flush(timeout=10)  # stored (at a revision) before: not during the build
    whole = plane.snapshot(("svc-050",), max_bytes=1500)
    sliced = await plane.snapshot_in_slices(("svc-050",), max_bytes=1500)
    for one in (whole, sliced):
        for breaker in one.breakers:  # counts down with the clock
            breaker.ClearField("open_remaining")
    assert sliced == whole
    assert [b.name for b in whole.breakers[:3]] == ["svc-050", "svc-007", "svc-100"]
    assert whole.omitted_breakers > 0


async def test_a_snapshot_whose_history_changed_while_it_was_built_is_built_again(
    control_plane: RunningControlPlane,
) -> None:
    # its breakers may rest on the new history's revisions: never sent under the old token
    plane = control_plane.plane
    await many_breakers(plane)
    before = plane.history.token
    building = asyncio.create_task(plane.snapshot_in_slices())
    await turns(20)
    plane.history.token = "a-new-history"  # as a changed token is taken (store_history)
    try:
        snapshot = await building
        assert snapshot.history == "a-new-history" != before
        assert len(snapshot.breakers) == COUNT
    finally:
        plane.history.token = before
