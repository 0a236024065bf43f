"""The one writer: ok, conflict and fenced told apart, on a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.app import RunningControlPlane
from mission_control.server.engine import FleetBreakers
from mission_control.server.etcd_process import EtcdProcess
from mission_control.server.policies import PolicyBook
from mission_control.server.store import EtcdStore, Guard, Write
from mission_control.server.writes import StateWriter, WriteStatus

from tests.support.agents import RawAgent


@dataclass
class Fence:
    """Leadership as the writer sees it, set by the test."""

    key: str
    create_revision: int
    leading: bool = True
    instance_id: str = "me"
    leader_id: str | None = "me"
    deposed: int = 0
    lease: int = 0

    def guard(self) -> Guard | None:
        return Guard(self.key, self.create_revision, self.lease) if self.leading else None

    def fenced(self) -> None:
        self.deposed += 1
        self.leading = False

    async def refresh_leader(self) -> None:
        return None


@pytest.fixture
async def writer(etcd_server: EtcdProcess, prefix: str) -> AsyncIterator[StateWriter]:
    store = await EtcdStore([etcd_server.endpoint]).connect()
    policies = PolicyBook(prefix)
    breakers = FleetBreakers(policies.policy_of)
    yield StateWriter(store, lambda name: f"{prefix}/breakers/{name}", breakers, policies)
    await store.close()


async def test_a_lost_compare_and_swap_is_a_conflict_and_says_what_is_stored(
    writer: StateWriter, prefix: str
) -> None:
    key = f"{prefix}/k"
    first = await writer.commit([Write(key, b"one", 0)])
    assert first.status is WriteStatus.OK and first.revision > 0
    lost = await writer.commit([Write(key, b"two", 0)])
    assert lost.status is WriteStatus.CONFLICT
    stored = lost.current[key]
    assert stored is not None and stored.value == b"one" and stored.mod_revision == first.revision


async def test_a_lost_fence_is_fenced_not_a_conflict(writer: StateWriter, prefix: str) -> None:
    leader = f"{prefix}/leader"
    made = await writer.commit([Write(leader, b"me", 0)])
    fence = Fence(leader, made.revision)
    writer.fence = fence
    assert (await writer.commit([Write(f"{prefix}/a", b"1")], fenced=True)).ok
    await writer.commit([Write(leader, None)])  # the leader key went (lease expired)
    await writer.commit([Write(leader, b"other", 0)])  # and another replica leads
    result = await writer.commit([Write(f"{prefix}/a", b"2", 0)], fenced=True)  # a CAS that fails too
    assert result.status is WriteStatus.FENCED and fence.deposed == 1
    # not leading: refused without asking the store
    assert (await writer.commit([Write(f"{prefix}/b", b"1")], fenced=True)).status is WriteStatus.FENCED


async def test_a_leader_key_created_again_at_the_same_revision_on_another_lease_fences(
    writer: StateWriter, prefix: str
) -> None:
    """After etcd is wiped its revisions start over, and another replica's leader key may be
    created at the very revision this one's was: only the lease tells them apart."""
    store = writer.store
    leader = f"{prefix}/leader"
    mine = await store.grant_lease(30)
    made = await writer.commit([Write(leader, b"me", 0, lease=mine)])
    fence = Fence(leader, made.revision, lease=mine)
    writer.fence = fence
    assert (await writer.commit([Write(f"{prefix}/a", b"1")], fenced=True)).ok
    other = await store.grant_lease(30)
    # the same key, created at the same revision (as after a wipe), on another lease
    await writer.commit([Write(leader, b"other", made.revision, lease=other)])
    assert (await store.get(leader)).create_revision == made.revision  # type: ignore[union-attr]
    result = await writer.commit([Write(f"{prefix}/a", b"2")], fenced=True)
    assert result.status is WriteStatus.FENCED and fence.deposed == 1
    assert (await store.get(f"{prefix}/a")).value == b"1"  # type: ignore[union-attr]
    for lease in (mine, other):
        await store.revoke_lease(lease)


async def test_a_decision_fenced_stays_pending_until_another_leader_supersedes_it(
    writer: StateWriter, prefix: str
) -> None:
    fence = Fence(f"{prefix}/leader", 12345)  # a fence that no longer holds
    writer.fence = fence
    writer.breakers.force("svc", BreakerState.FORCED_OPEN, "decided here")
    writer.decided("svc")
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(500):
            if fence.deposed:
                break
            await asyncio.sleep(0.01)
        assert fence.deposed == 1 and writer.is_pending("svc")  # kept, not adopted
        assert writer.breakers.get("svc").state is BreakerState.FORCED_OPEN
        fence.leader_id = "other"  # another replica leads: its state (nothing stored) wins
        writer.wake()
        for _ in range(500):
            if not writer.is_pending("svc"):
                break
            await asyncio.sleep(0.01)
        assert not writer.is_pending("svc") and writer.superseded == 1
        assert writer.breakers.get("svc").state is BreakerState.CLOSED
    finally:
        task.cancel()


async def test_a_probe_request_for_a_breaker_that_is_not_half_open_answers_its_state(
    control_plane: RunningControlPlane,
) -> None:
    async with RawAgent(f"127.0.0.1:{control_plane.port}", "agent-1") as agent:
        await agent.ask_probe("never_opened")
        await agent.wait_for(lambda: agent.state("never_opened") == pb.BREAKER_STATE_CLOSED)
        # the answer creates nothing: a flood of probe requests for made-up names costs no memory
        for i in range(50):
            await agent.ask_probe(f"made-up-{i}")
        await agent.wait_for(lambda: agent.state("made-up-49") == pb.BREAKER_STATE_CLOSED)
        assert control_plane.plane.breakers.find("never_opened") is None
        assert not [n for n in control_plane.plane.breakers.names() if n.startswith("made-up-")]


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5 s: {what}")


async def test_a_superseded_decision_gives_way_even_when_the_stored_key_has_not_changed(
    writer: StateWriter, prefix: str
) -> None:
    key = writer.breaker_key("svc")
    stored = await writer.commit([Write(key, writer.breakers.to_record("svc"), 0)])  # CLOSED, stored
    writer.breakers.adopt("svc", writer.breakers.to_record("svc"), stored.revision)
    fence = Fence(f"{prefix}/leader", 12345, leading=False, leader_id="other")
    writer.fence = fence
    writer.breakers.force("svc", BreakerState.FORCED_OPEN, "decided here, never stored")
    writer.decided("svc")
    task = asyncio.create_task(writer.run())
    try:
        await _until(lambda: not writer.is_pending("svc"), "the decision superseded")
        # the stored state (CLOSED, at the revision already seen) replaces the decision
        assert writer.breakers.get("svc").state is BreakerState.CLOSED
    finally:
        task.cancel()


async def test_a_follower_superseded_over_a_malformed_record_does_not_keep_its_decision_pending(
    writer: StateWriter, prefix: str
) -> None:
    await writer.commit([Write(writer.breaker_key("svc"), b"{garbage")])
    writer.fence = Fence(f"{prefix}/leader", 12345, leading=False, leader_id="other")
    writer.breakers.force("svc", BreakerState.FORCED_OPEN, "decided here")
    writer.decided("svc")
    task = asyncio.create_task(writer.run())
    try:
        # superseding adopts in the same step: a decision taken again would be pending now
        await _until(lambda: writer.superseded >= 1, "the decision superseded")
        assert not writer.is_pending("svc")
    finally:
        task.cancel()


async def test_a_follower_superseded_over_a_malformed_record_takes_no_revision_from_it(
    writer: StateWriter, prefix: str
) -> None:
    """Its decision (taken while it led, never stored) rests on no stored record: a leader
    holding the breaker from no record (CLOSED) is told over it to its agents, as for a
    follower that read the record by its watch (simulation seeds 65 and 137: a follower
    kept telling an OPEN, a HALF_OPEN, the leader had superseded)."""
    from mission_control.server.leader_states import NONE, basis, told

    await writer.commit([Write(writer.breaker_key("svc"), b"{garbage")])
    writer.fence = Fence(f"{prefix}/leader", 12345, leading=False, leader_id="other")
    writer.breakers.force("svc", BreakerState.FORCED_OPEN, "decided here")
    writer.decided("svc")
    task = asyncio.create_task(writer.run())
    try:
        await _until(lambda: writer.superseded >= 1, "the decision superseded")
        own = writer.breakers.to_proto("svc")  # what leader_states weighs the leader's against
        assert own.state == pb.BREAKER_STATE_FORCED_OPEN and own.revision == 0
        assert told(NONE, basis(own), cut_off=False)  # the leader's CLOSED is what its agents hear
    finally:
        task.cancel()
