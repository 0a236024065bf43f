"""A leader grants probe permits only for a breaker the store is known to hold not CLOSED
(``server/stored_runs.py``): a leader cut off from etcd may trip and half-open a breaker etcd
has CLOSED while its lease holds, and its successor, loading CLOSED, would not wait out
those permits. Engine cases on an injected clock, then a control plane whose store refuses
its writes on a virtual clock."""

from __future__ import annotations

import asyncio
import dataclasses
import random

from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_to_json
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.control_plane import ControlPlane
from mission_control.server.engine import FleetBreakers

from ..sim_fleet import vloop
from ..sim_fleet.memstore import MemEtcd, MemStore
from .test_probe_permits import POLICY, SERVICE, Clock, engine, summary


def leader() -> tuple[FleetBreakers, Clock, list[tuple[str, int]]]:
    fleet, clock, grants = engine()
    fleet.lead_check = lambda: True
    return fleet, clock, grants


def trip(fleet: FleetBreakers) -> None:
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    assert fleet.get(SERVICE).state is BreakerState.OPEN


def wait_over(fleet: FleetBreakers, clock: Clock) -> None:
    clock.now += fleet.get(SERVICE).open_remaining(clock.now)
    fleet.tick()
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN


def stored(fleet: FleetBreakers, revision: int) -> None:
    """The writer's write of the breaker as it is now was acknowledged at ``revision``."""
    fleet.stored(SERVICE, revision, fleet.run_of(SERVICE))


def test_no_permit_for_an_open_the_store_has_not_taken_until_it_has() -> None:
    fleet, clock, grants = leader()
    trip(fleet)  # the OPEN's write cannot land: etcd still holds CLOSED
    wait_over(fleet, clock)
    assert fleet.request_probe("a", SERVICE) is None
    assert grants == []
    stored(fleet, 4)  # the pending write lands (as HALF_OPEN, the state held now)
    assert grants == [("a", fleet.get(SERVICE).generation)]  # a, asking, gets it at once


def test_the_stored_open_allows_the_half_open_decided_from_memory() -> None:
    """etcd holds the OPEN: a successor holds the breaker at its takeover, so the
    HALF_OPEN decided from memory after it (and the next one, after a failed probe) may
    grant — what the successor waits for covers them."""
    fleet, clock, _ = leader()
    trip(fleet)
    stored(fleet, 4)
    wait_over(fleet, clock)
    first = fleet.get(SERVICE).generation
    assert fleet.request_probe("a", SERVICE) is not None
    fleet.record("a", summary(first, probe_failures=1))  # OPEN again, not written (yet)
    wait_over(fleet, clock)
    assert fleet.request_probe("b", SERVICE) is not None


def test_a_write_of_an_earlier_run_that_lands_late_does_not_count() -> None:
    """The breaker closed and tripped again while a write of its earlier OPEN was on its
    way: etcd may have taken a CLOSED since (a write whose answer was lost), so only a
    record of this run tells that etcd holds it not CLOSED."""
    fleet, clock, grants = leader()
    trip(fleet)
    earlier = fleet.run_of(SERVICE)
    closed = fleet.draft(SERVICE)
    closed.force(clock.now, BreakerState.CLOSED)  # an operator's reset, read from the store
    fleet.adopt(SERVICE, fleet.record_of(closed), revision=5)
    assert fleet.run_of(SERVICE) is None  # CLOSED: a record of it allows nothing
    trip(fleet)
    wait_over(fleet, clock)
    fleet.stored(SERVICE, 6, earlier)
    assert fleet.request_probe("a", SERVICE) is None
    assert grants == []
    stored(fleet, 7)
    assert grants == [("a", fleet.get(SERVICE).generation)]


def test_an_open_read_from_the_store_allows_permits() -> None:
    fleet, clock, _ = leader()
    other, _, _ = engine()
    trip(other)
    fleet.adopt(SERVICE, other.to_record(SERVICE), revision=3)  # another replica's OPEN
    wait_over(fleet, clock)
    assert fleet.request_probe("a", SERVICE) is not None


def test_after_the_store_lost_its_data_no_permit_until_the_breaker_is_restored() -> None:
    fleet, clock, grants = leader()
    trip(fleet)
    stored(fleet, 4)
    wait_over(fleet, clock)
    fleet.revisions.clear()  # the store was wiped (``StoreSync._lost_data``)
    assert fleet.request_probe("a", SERVICE) is None
    assert grants == []
    stored(fleet, 2)  # written back (``StateWriter.restore``)
    assert grants == [("a", fleet.get(SERVICE).generation)]


def test_a_replica_that_runs_alone_grants_from_memory() -> None:
    fleet, clock, _ = engine()  # no leadership: no other replica grants, none succeeds it
    trip(fleet)
    wait_over(fleet, clock)
    assert fleet.request_probe("a", SERVICE) is not None


# -- a control plane whose store refuses its writes ---------------------------------------


def test_a_leader_cut_off_from_etcd_grants_for_a_breaker_it_tripped_only_once_etcd_took_it() -> None:
    """The leader trips the breaker while etcd cannot take its writes, and half-opens it
    while its leader lease still holds: no permit (before: one, for a HALF_OPEN of a
    breaker etcd had CLOSED, which a successor would grant again); once etcd takes the
    pending write the asking agent gets its permit."""

    async def main() -> None:
        etcd = MemEtcd(random.Random(1))
        policy = dataclasses.replace(POLICY, wait_duration_secs=1.0)
        etcd.put_raw(f"/p/policies/{SERVICE}", policy_to_json(policy).encode())
        store = MemStore(etcd)
        clock = asyncio.get_running_loop().time
        plane = ControlPlane(store, prefix="/p", instance_id="cp0", clock=clock, wall=lambda: 1e9 + clock())
        plane.enable_leadership("cp0", ttl=3, connect=_no_relay)
        grants: list[float] = []
        plane.breakers.grant_listeners.append(lambda agent, grant: grants.append(clock()))
        await plane.start(load_timeout=5.0)
        leadership = plane.leadership
        assert leadership is not None and leadership.leading
        await _until(lambda: plane.breakers.find(SERVICE) is None or not plane.writer.pending, "settled")
        store.cut = True
        plane.count_batch(None, "a", [pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2)])
        assert plane.breakers.get(SERVICE).state is BreakerState.OPEN
        await _until(lambda: plane.breakers.get(SERVICE).state is BreakerState.HALF_OPEN, "HALF_OPEN")
        plane.request_probe("a", SERVICE)
        assert leadership.lease_valid()  # it leads, as far as it can know: only the rule refuses
        assert grants == []
        store.cut = False
        await _until(lambda: not plane.writer.pending, "the pending write lands")
        plane.request_probe("a", SERVICE)  # the agent asks again (every 100 ms)
        assert grants
        await plane.stop()

    vloop.run(main())


async def _no_relay(address, requests, metadata):  # type: ignore[no-untyped-def]
    raise ConnectionResetError(f"{address}: a lone replica relays to nobody")
    yield  # pragma: no cover


async def _until(check, what: str, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within} virtual seconds: {what}"
        await asyncio.sleep(0.02)
