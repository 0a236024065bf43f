"""Idle breakers no policy names are forgotten on time, and finding them costs what changed:
``ServiceAdmission.idle`` looks at an admitted name when it may be idle (a heap), not at
every breaker each second (``server/admission.py``). Clock-injected; real engine and
policy book."""

from __future__ import annotations

from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_to_json
from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.admission import AdmissionLimits, ServiceAdmission
from mission_control.server.engine import FleetBreakers
from mission_control.server.policies import PolicyBook

from .test_reports import Clock

IDLE = 60.0


def setup(*policies: ServicePolicy) -> tuple[Clock, PolicyBook, FleetBreakers, ServiceAdmission]:
    clock = Clock()
    book = PolicyBook("/t")
    for i, policy in enumerate(policies, 1):
        book.apply(book.key(policy.service), policy_to_json(policy).encode(), i)
    breakers = FleetBreakers(book.policy_of, clock=clock)
    admission = ServiceAdmission(book, breakers, AdmissionLimits(idle_secs=IDLE), clock)
    return clock, book, breakers, admission


def loaded(breakers: FleetBreakers, name: str, revision: int) -> None:
    """A breaker read from the store."""
    record = breakers.record_of(breakers.draft(name))
    breakers.adopt(name, record, revision)


def test_a_name_is_forgotten_idle_secs_after_its_last_report_not_before() -> None:
    clock, _, breakers, admission = setup()
    assert admission.allows("a", "fad")
    breakers.get("fad")
    assert admission.idle() == []
    clock.now += 40
    assert admission.allows("a", "fad")  # reported on: idle from here
    clock.now += IDLE - 1
    assert admission.idle() == []
    clock.now += 1
    assert admission.idle() == ["fad"]
    assert admission.idle() == []  # its place is free: said once


def test_breakers_loaded_after_the_first_look_take_a_place_and_are_forgotten_on_time() -> None:
    clock, _, breakers, admission = setup()
    assert admission.idle() == []
    clock.now += 5
    for i in range(3):
        loaded(breakers, f"stored-{i}", 10 + i)
    assert admission.idle() == []
    assert set(admission.admitted) == {"stored-0", "stored-1", "stored-2"}
    clock.now += IDLE - 0.5
    assert admission.idle() == []
    clock.now += 0.5
    assert sorted(admission.idle()) == ["stored-0", "stored-1", "stored-2"]


def test_an_open_breakers_idle_time_starts_when_it_closes() -> None:
    clock, _, breakers, admission = setup()
    assert admission.allows("a", "down")
    breakers.record("a", pb.OutcomeSummary(service="down", failures=5, trailing_failures=5))
    assert breakers.to_proto("down").state == pb.BREAKER_STATE_OPEN
    clock.now += 3 * IDLE  # OPEN all along: never idle
    assert admission.idle() == []
    clock.now += 7
    breakers.force("down", BreakerState.CLOSED, "recovered")
    clock.now += IDLE - 1
    assert admission.idle() == []  # closed IDLE - 1 ago
    clock.now += 1
    assert admission.idle() == ["down"]


def test_an_operators_state_is_kept_and_forgotten_at_once_when_reset_after_its_idle_time() -> None:
    clock, _, breakers, admission = setup()
    assert admission.allows("a", "held")
    breakers.force("held", BreakerState.FORCED_OPEN, "maintenance")
    clock.now += 2.5 * IDLE
    assert admission.idle() == []
    breakers.force("held", BreakerState.CLOSED, "done")
    clock.now += 0.1
    assert admission.idle() == ["held"]


def test_a_policy_change_takes_or_gives_back_places() -> None:
    clock, book, breakers, admission = setup(ServicePolicy("named"))
    breakers.get("named")
    assert admission.allows("a", "other")
    breakers.get("other")
    assert admission.idle() == [] and set(admission.admitted) == {"other"}
    book.apply(book.key("other"), policy_to_json(ServicePolicy("other")).encode(), 5)
    book.apply(book.key("named"), None, 6)
    clock.now += 1
    assert admission.idle() == []
    assert set(admission.admitted) == {"named"}  # covered no more: a place, idle from here
    clock.now += IDLE
    assert admission.idle() == ["named"]


def test_a_look_with_nothing_due_looks_at_no_name_whatever_the_number_held() -> None:
    clock, _, breakers, admission = setup()
    for i in range(15_000):  # (as a load makes them, without the records' JSON)
        breakers.get(f"stored-{i:05d}")
    assert admission.idle() == []
    assert len(admission.admitted) == 15_000
    looked = admission.looked_at
    for _ in range(30):  # thirty looks, a second apart
        clock.now += 1
        assert admission.idle() == []
    assert admission.looked_at == looked
    clock.now += IDLE
    assert len(admission.idle()) == 15_000
    assert admission.looked_at == looked + 15_000
