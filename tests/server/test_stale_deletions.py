"""A deletion heard after a later write of the same key was taken here is stale: the key holds
that write. And a breaker started over after it was forgotten goes on from its own record
left behind by a failed deletion. Engine and the real StoreSync.apply (the watch's path)."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.engine import FleetBreakers
from mission_control.server.seen_values import SeenValues

from tests.server.test_hostile_clients import _synced


def test_a_late_deletion_of_a_forgotten_breaker_reopened_and_stored_since_is_ignored() -> None:
    fleet, sync = _synced()
    key = "/p/breakers/fad"
    fleet.get("fad")
    assert sync.apply(key, fleet.to_record("fad"), 7)  # stored CLOSED at 7
    fleet.forget("fad")  # idle: forgotten, its key deleted at 8 (the event on its way)
    fleet.record("a", pb.OutcomeSummary(service="fad", failures=5, trailing_failures=5))
    assert fleet.get("fad").state is BreakerState.OPEN
    fleet.stored("fad", 9, fleet.run_of("fad"))  # the writer's create of the OPEN: 9
    assert sync.apply(key, None, 8)  # the deletion's event, heard only now
    breaker = fleet.find("fad")
    assert breaker is not None and breaker.state is BreakerState.OPEN
    assert fleet.revisions["fad"] == 9


def test_a_late_deletion_before_an_operators_write_taken_here_is_ignored() -> None:
    fleet, sync = _synced()
    key = "/p/breakers/live"
    fleet.record("a", pb.OutcomeSummary(service="live", failures=5, trailing_failures=5))
    assert sync.apply(key, fleet.to_record("live"), 7)  # stored OPEN at 7
    # etcdctl del at 8; an operator's force-open here finds the key gone (its write's read)
    # and creates it at 9, before the watch says 8
    fleet.adopt("live", None, 0)
    fleet.force("live", BreakerState.FORCED_OPEN, "operator")
    fleet.adopt("live", fleet.to_record("live"), 9)
    assert sync.apply(key, None, 8)
    assert fleet.get("live").state is BreakerState.FORCED_OPEN
    assert fleet.revisions["live"] == 9
    assert sync.apply(key, fleet.to_record("live"), 9)  # the write's own event: nothing new
    assert sync.apply(key, None, 10)  # a deletion after the write held starts it over
    breaker = fleet.find("live")
    assert breaker is not None and breaker.state is BreakerState.CLOSED
    assert fleet.revisions["live"] == 0


def test_the_engine_ignores_a_deletion_older_than_the_revision_held() -> None:
    fleet = FleetBreakers(lambda name: ServicePolicy(name))
    fleet.record("a", pb.OutcomeSummary(service="x", failures=5, trailing_failures=5))
    fleet.adopt("x", fleet.to_record("x"), 9)
    fleet.adopt("x", None, 8)
    assert fleet.get("x").state is BreakerState.OPEN and fleet.revisions["x"] == 9
    fleet.adopt("x", None, 0)  # the writer's read found it absent: taken
    assert fleet.get("x").state is BreakerState.CLOSED and fleet.revisions["x"] == 0


def test_a_late_deletion_keeps_the_value_seen_at_a_later_revision() -> None:
    seen = SeenValues()
    seen.note("k", b"v", 9)
    seen.note("k", None, 8)
    assert seen.rewritten("k", b"w", 9)
    seen.note("k", None, 10)
    assert not seen.rewritten("k", b"w", 9)


def _forgotten_after_a_run(fleet: FleetBreakers, name: str, revision: int) -> bytes:
    """``name`` opened, closed by an operator, stored CLOSED at ``revision`` and forgotten;
    returns its record (left in the store should the deletion fail)."""
    fleet.record("a", pb.OutcomeSummary(service=name, failures=5, trailing_failures=5))
    fleet.force(name, BreakerState.CLOSED, "fixed")
    record = fleet.to_record(name)
    fleet.adopt(name, record, revision)
    fleet.forget(name)
    return record


def test_a_breaker_started_over_counts_its_generations_on_from_what_agents_were_told() -> None:
    fleet = FleetBreakers(lambda name: ServicePolicy(name))
    _forgotten_after_a_run(fleet, "fad", 7)
    told = 2  # OPEN, then CLOSED
    fleet.record("a", pb.OutcomeSummary(service="fad", failures=5, trailing_failures=5))
    breaker = fleet.find("fad")
    assert breaker is not None and breaker.state is BreakerState.OPEN
    assert breaker.generation == told + 1


def test_a_breaker_started_over_goes_on_from_its_own_record_left_behind() -> None:
    fleet = FleetBreakers(lambda name: ServicePolicy(name))
    record = _forgotten_after_a_run(fleet, "fad", 7)
    fleet.record("a", pb.OutcomeSummary(service="fad", failures=5, trailing_failures=5))
    assert fleet.resumed("fad", record, 7)
    assert fleet.revisions["fad"] == 7 and fleet.records["fad"] == record
    assert fleet.get("fad").state is BreakerState.OPEN  # what was decided stays
    assert fleet.forgotten_at("fad") == 0
    assert not fleet.resumed("fad", record, 7)  # once: it rests on that record now


def test_only_the_very_record_forgotten_is_gone_on_from() -> None:
    fleet = FleetBreakers(lambda name: ServicePolicy(name))
    record = _forgotten_after_a_run(fleet, "fad", 7)
    assert not fleet.resumed("fad", record, 7)  # not started over: nothing to go on with
    fleet.record("a", pb.OutcomeSummary(service="fad", failures=5, trailing_failures=5))
    assert not fleet.resumed("fad", record, 8)  # written since (by another)
    other = FleetBreakers(lambda name: ServicePolicy(name))
    other.get("fad")
    rewritten = other.to_record("fad")  # generation 0: another record at that revision
    assert not fleet.resumed("fad", rewritten, 7)
    other.force("fad", BreakerState.FORCED_OPEN, "operator")
    assert not fleet.resumed("fad", other.to_record("fad"), 7)
    assert not fleet.resumed("fad", b"not json", 7)
    assert fleet.revisions.get("fad", 0) == 0 and fleet.forgotten_at("fad") == 7
    assert fleet.resumed("fad", record, 7)


def test_a_forgotten_mark_lost_to_a_loss_of_data_is_no_basis() -> None:
    fleet = FleetBreakers(lambda name: ServicePolicy(name))
    record = _forgotten_after_a_run(fleet, "fad", 7)
    fleet.lost_revisions()
    fleet.record("a", pb.OutcomeSummary(service="fad", failures=5, trailing_failures=5))
    assert not fleet.resumed("fad", record, 7)
