"""Probe permits across a leader change (I3), on an injected clock: a new leader grants
none for a HALF_OPEN from before it until an earlier leader's permits are over, and a
leader grants only while its leader lease is known to hold."""

from __future__ import annotations

import asyncio
import random

from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.leadership import LEASE_MARGIN_SECS, Leadership

from ..sim_fleet import vloop
from ..sim_fleet.memstore import MemEtcd, MemStore
from .test_probe_permits import HOLD, POLICY, SERVICE, engine, half_open


def test_a_new_leader_grants_for_a_half_open_from_before_only_once_earlier_permits_are_over() -> None:
    old, old_clock, _ = engine()
    half_open(old, old_clock)
    assert old.request_probe("a", SERVICE) is not None  # a probe may run until HOLD from now
    new, clock, grants = engine()
    clock.now = old_clock.now
    new.lead_check = lambda: True
    new.adopt(SERVICE, old.to_record(SERVICE), revision=7)
    new.took_over()
    assert new.get(SERVICE).state is BreakerState.HALF_OPEN
    assert new.request_probe("b", SERVICE) is None
    clock.now += HOLD - 0.01
    assert new.request_probe("b", SERVICE) is None
    clock.now += 0.02
    assert new.request_probe("b", SERVICE) is not None
    assert grants == [("b", new.get(SERVICE).generation)]


def stored(fleet: FleetBreakers, revision: int = 4) -> None:
    """The write of the breaker as held now was acknowledged: etcd holds it."""
    fleet.stored(SERVICE, revision, fleet.run_of(SERVICE))


def test_a_half_open_the_new_leader_decides_itself_grants_at_once() -> None:
    fleet, clock, _ = engine()
    fleet.lead_check = lambda: True
    fleet.took_over()
    half_open(fleet, clock)  # OPEN and HALF_OPEN decided here, after the takeover
    stored(fleet)
    assert fleet.request_probe("a", SERVICE) is not None


def test_after_a_takeover_even_its_own_half_open_waits_for_earlier_permits() -> None:
    """Seeds 1007, 1077 at ``--active 40``: the old leader, cut from etcd, decided a
    HALF_OPEN from memory and granted while its lease held; the new one decided its own
    HALF_OPEN from the OPEN etcd had (same generation) and granted beside it. A replica
    restarted in place, or one that found the leader key already expired, saw no other
    leader: it waits all the same."""
    fleet, clock, _ = engine()
    fleet.lead_check = lambda: True
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    assert fleet.get(SERVICE).state is BreakerState.OPEN
    stored(fleet)  # as etcd has it
    took_over = clock.now = clock.now + POLICY.wait_duration_secs - 0.5
    fleet.took_over()
    clock.now += 0.5
    fleet.tick()
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN  # decided here, after the takeover
    assert fleet.request_probe("a", SERVICE) is None
    clock.now = took_over + HOLD - 0.01
    assert fleet.request_probe("a", SERVICE) is None
    clock.now += 0.02
    assert fleet.request_probe("a", SERVICE) is not None


def test_an_open_first_loaded_after_the_takeover_waits_from_when_it_is_loaded() -> None:
    """A restarted replica may win the campaign before its first load from the store: the
    OPEN it then loads is an earlier leader's, whose HALF_OPEN may have probes out."""
    old, old_clock, _ = engine()
    old.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    assert old.get(SERVICE).state is BreakerState.OPEN
    new, clock, _ = engine()
    clock.now = old_clock.now
    new.lead_check = lambda: True
    new.took_over()  # nothing loaded yet
    clock.now += POLICY.wait_duration_secs - 1.0
    loaded = clock.now
    new.adopt(SERVICE, old.to_record(SERVICE), revision=3)
    clock.now += 1.0  # the OPEN's wait is over
    new.tick()
    assert new.get(SERVICE).state is BreakerState.HALF_OPEN
    assert new.request_probe("a", SERVICE) is None
    clock.now = loaded + HOLD - 0.01
    assert new.request_probe("a", SERVICE) is None
    clock.now += 0.02
    assert new.request_probe("a", SERVICE) is not None


def test_the_echo_of_a_leaders_own_open_does_not_hold_its_probes() -> None:
    fleet, clock, _ = engine()
    fleet.lead_check = lambda: True
    fleet.took_over()
    fleet.record("a", pb.OutcomeSummary(service=SERVICE, failures=2, trailing_failures=2))
    assert fleet.get(SERVICE).state is BreakerState.OPEN  # decided here
    fleet.adopt(SERVICE, fleet.to_record(SERVICE), revision=4)  # its write, seen on the watch
    clock.now += POLICY.wait_duration_secs
    fleet.tick()
    assert fleet.get(SERVICE).state is BreakerState.HALF_OPEN
    assert fleet.request_probe("a", SERVICE) is not None


def test_a_half_open_another_replica_stored_while_this_one_leads_waits_too() -> None:
    """Two replicas led for a moment: the HALF_OPEN the other wrote may have its permits out."""
    fleet, clock, _ = engine()
    fleet.lead_check = lambda: True
    fleet.took_over()
    half_open(fleet, clock)
    clock.now += HOLD
    other = fleet.draft(SERVICE)
    other.generation += 1
    fleet.adopt(SERVICE, fleet.record_of(other), revision=fleet.revisions.get(SERVICE, 0) + 5)
    assert fleet.request_probe("a", SERVICE) is None
    clock.now += HOLD
    assert fleet.request_probe("a", SERVICE) is not None


def test_a_leader_whose_lease_is_not_known_to_hold_grants_nothing() -> None:
    fleet, clock, _ = engine()
    valid = [False]
    fleet.lead_check = lambda: valid[0]
    half_open(fleet, clock)
    stored(fleet)
    assert fleet.request_probe("a", SERVICE) is None
    valid[0] = True
    assert fleet.request_probe("a", SERVICE) is not None


def test_the_lease_is_known_valid_only_until_a_ttl_after_the_last_renewal_was_sent() -> None:
    """A leader cut off from etcd still believes it leads, but stops granting before its
    lease can have expired in etcd, that is before any successor can lead."""

    async def main() -> None:
        etcd = MemEtcd(random.Random(1))
        store = MemStore(etcd)
        clock = asyncio.get_running_loop().time
        leadership = Leadership(store, "/p", "r0", "127.0.0.1:1", ttl=3, clock=clock)
        running = asyncio.create_task(leadership.run())
        while not leadership.leading:
            await asyncio.sleep(0.01)
        assert leadership.lease_valid()
        store.cut = True
        cut_at = etcd.now
        while leadership.lease_valid():
            await asyncio.sleep(0.01)
        assert leadership.leading  # it does not know yet
        assert etcd.now - cut_at <= 3 - LEASE_MARGIN_SECS + 1e-6
        lease = next(iter(etcd.leases.values()))
        assert etcd.now < lease.expires  # etcd still holds its lease: nobody else leads yet
        running.cancel()

    vloop.run(main())


def test_a_replica_that_steps_down_drops_its_permits() -> None:
    """1084 at ``--active 40``: a deposed leader kept a relayed grant past its hold (a
    follower does not tick); its next term waits its grants out instead."""
    fleet, clock, _ = engine()
    half_open(fleet, clock)
    assert fleet.request_probe("a", SERVICE) is not None
    fleet.stepped_down()
    assert not fleet.get(SERVICE).permits_of("a")
