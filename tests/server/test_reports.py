"""What one agent's report may claim, and which services may have a breaker (pure, injected clock)."""

from __future__ import annotations

import pytest
from mission_control.client.breaker import BreakerState
from mission_control.client.config import policy_to_json
from mission_control.client.policy import SEED_PRESETS, ServicePolicy, SlowCall
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.admission import AdmissionLimits, ServiceAdmission
from mission_control.server.auth import identity_matches, is_loopback_peer
from mission_control.server.engine import FleetBreakers
from mission_control.server.policies import PolicyBook
from mission_control.server.reports import ReportGate, ReportLimits
from mission_control.server.stats import FleetStatistics, Page

U32 = 2**32 - 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(*policies: ServicePolicy) -> PolicyBook:
    found = PolicyBook("/t")
    for i, policy in enumerate(policies, 1):
        found.apply(found.key(policy.service), policy_to_json(policy).encode(), i)
    return found


def gate(*policies: ServicePolicy, clock: Clock | None = None) -> ReportGate:
    return ReportGate(book(*policies).policy_of, ReportLimits(), clock or Clock())


def test_a_summary_claims_at_most_the_calls_the_rate_limit_allowed() -> None:
    clock = Clock()
    reports = gate(ServicePolicy("llm", rate_limit_requests=100, rate_limit_window_secs=60), clock=clock)
    out = reports.bound(
        "a", pb.OutcomeSummary(service="llm", failures=U32, trailing_failures=U32, successes=7)
    )
    assert out is not None and (out.failures, out.successes, out.trailing_failures) == (200, 0, 200)
    assert reports.refused["a"] == 1
    clock.now += 30  # half a window refills 50 calls
    out = reports.bound("a", pb.OutcomeSummary(service="llm", successes=80))
    assert out is not None and out.successes == 50
    assert reports.bound("b", pb.OutcomeSummary(service="llm", failures=5)).failures == 5  # type: ignore[union-attr]


def test_an_honest_agent_within_its_rate_limit_is_never_cut() -> None:
    clock = Clock()
    reports = gate(ServicePolicy("s", rate_limit_requests=10, rate_limit_window_secs=1), clock=clock)
    for _ in range(100):
        clock.now += 0.1
        out = reports.bound("a", pb.OutcomeSummary(service="s", successes=1, failures=0))
        assert out is not None and out.successes == 1
    assert not reports.refused


def test_error_keys_are_bounded_in_length_number_and_per_agent() -> None:
    reports = gate()
    summary = pb.OutcomeSummary(service="s", failures=3)
    summary.errors_by_type["x" * 10_000] = 1
    summary.errors_by_type["LLMProviderUnavailable"] = U32
    for i in range(100):
        summary.errors_by_operation[f"op{i}"] = 1
    out = reports.bound("a", summary)
    assert out is not None
    assert dict(out.errors_by_type) == {"LLMProviderUnavailable": 3}
    assert len(out.errors_by_operation) == ReportLimits().max_keys_per_summary
    more = pb.OutcomeSummary(service="s", failures=1, errors_by_operation={f"new{i}": 1 for i in range(40)})
    out = reports.bound("a", more)
    assert out is not None and "other" in out.errors_by_operation  # past 64 keys for this agent


def test_a_policy_names_who_may_report() -> None:
    reports = gate(ServicePolicy("pay", reporters=("checkout-*", "auditor")))
    assert reports.bound("mallory", pb.OutcomeSummary(service="pay", failures=5)) is None
    assert reports.bound("checkout-7", pb.OutcomeSummary(service="pay", failures=5)) is not None
    assert reports.bound("auditor", pb.OutcomeSummary(service="pay", failures=5)) is not None
    assert reports.refused == {"mallory": 1}


def test_unknown_services_are_admitted_up_to_per_agent_and_total_caps_and_forgotten_when_idle() -> None:
    clock = Clock()
    policies = book(ServicePolicy("named"))
    breakers = FleetBreakers(policies.policy_of, clock=clock)
    admission = ServiceAdmission(
        policies, breakers, AdmissionLimits(per_agent=3, total=5, idle_secs=60), clock
    )
    assert all(admission.allows("a", "named") for _ in range(10))  # a policy names it: always
    assert [admission.allows("a", f"x{i}") for i in range(4)] == [True, True, True, False]
    assert [admission.allows("b", f"y{i}") for i in range(3)] == [True, True, False]  # total 5
    assert admission.allows("a", "x0")  # already admitted
    for name in ("x0", "x1", "x2", "y0", "y1"):
        breakers.get(name)
    breakers.get("x0").state = BreakerState.FORCED_OPEN  # an operator's state is kept
    clock.now += 30
    admission.allows("b", "y1")
    clock.now += 31
    assert sorted(admission.idle()) == ["x1", "x2", "y0"]
    for name in ("x1", "x2", "y0"):
        breakers.forget(name)
    assert admission.allows("b", "z") and admission.allows("c", "w")
    assert admission.refused == 2


def test_counts_beyond_their_fields_saturate() -> None:
    breakers = FleetBreakers(book().policy_of, clock=Clock())
    breakers.record("a", pb.OutcomeSummary(service="s", failures=U32, trailing_failures=U32))
    breakers.record("a", pb.OutcomeSummary(service="s", failures=U32))  # already OPEN: ignored
    breaker = breakers.get("s")
    breaker.failures = breaker.consecutive_failures = 2**40
    message = breakers.to_proto("s")
    assert message.failures == message.consecutive_failures == U32
    stats = FleetStatistics()
    for _ in range(3):
        stats.add_dropped(2**64 - 1)
        stats.record("a", pb.OutcomeSummary(service="s", failures=U32, errors_by_type={"X": U32}))
    stats.recovery_attempts = stats.recovery_successes = 2**64 - 5
    stats.record("a", pb.OutcomeSummary(service="s", recovery_attempts=U32, recovery_successes=U32))
    answer = stats.to_proto(book(), 0)
    assert answer.outcomes_dropped == 2**64 - 1 and answer.recovery_attempts == 2**64 - 1
    assert 0 <= answer.recovery_success_rate <= 100


def test_buckets_are_capped_oldest_first_without_looking_up_policies() -> None:
    policies = book()
    looked_up: list[str] = []

    def policy_of(service: str) -> ServicePolicy:
        looked_up.append(service)
        return policies.policy_of(service)

    reports = ReportGate(policy_of, ReportLimits(max_buckets=100), Clock())
    for i in range(100):
        reports.bound(f"agent-{i}", pb.OutcomeSummary(service="svc", failures=1))
    reports.bound("agent-0", pb.OutcomeSummary(service="svc", failures=1))  # used again: kept
    looked_up.clear()
    for i in range(100, 150):
        reports.bound(f"agent-{i}", pb.OutcomeSummary(service="svc", failures=1))
    assert reports.buckets == 100
    assert len(looked_up) == 50  # one per summary: a full gate never walks its buckets
    # agent-1 was evicted (its next report starts a fresh bucket); agent-0 was not.
    assert ("agent-0", "svc") in reports._buckets and ("agent-1", "svc") not in reports._buckets


def test_an_agent_that_leaves_takes_its_buckets_with_it() -> None:
    reports = gate()
    for service in ("a", "b", "c"):
        reports.bound("leaver", pb.OutcomeSummary(service=service, successes=1))
    reports.bound("stayer", pb.OutcomeSummary(service="a", successes=1))
    assert reports.buckets == 4
    reports.agent_left("leaver")
    assert reports.buckets == 1


def test_the_default_policy_of_an_unnamed_service_is_built_once() -> None:
    policies = book()
    first = policies.policy_of("unnamed-1")
    assert first is policies.policy_of("unnamed-1")
    assert first == ServicePolicy("unnamed-1")
    preset = ServicePolicy("llm_provider", **dict(SEED_PRESETS["llm_provider"]))
    assert policies.policy_of("llm_provider") == preset


def test_an_agents_summaries_are_admitted_up_to_its_budget() -> None:
    clock = Clock()
    reports = ReportGate(book().policy_of, ReportLimits(summaries_per_sec=100, summaries_burst=200), clock)
    assert reports.admit("a", 150) == 150
    assert reports.admit("a", 150) == 50
    assert reports.admit("b", 150) == 150  # budgets are per agent
    clock.now += 1.0
    assert reports.admit("a", 150) == 100
    reports.agent_left("a")  # leaving and coming back brings no fresh burst
    assert reports.admit("a", 150) == 0
    assert reports.refill_secs(100) == 1.0


def test_page_tokens_are_ascii_digits_only() -> None:
    assert Page.parse(0, "").offset == 0 and Page.parse(0, "10").offset == 10
    for token in ("1_0", "１０", " 5 ", "-1", "+5", "5\n", "9" * 13):
        with pytest.raises(ValueError):
            Page.parse(0, token)


def test_replica_identities_match_exactly_or_by_prefix_only() -> None:
    assert identity_matches("cp-1", "cp-*") and identity_matches("cp-1", "cp-1")
    assert not identity_matches("cp-1", "cp-?") and not identity_matches("cp-1", "cp-[0-9]")
    assert not identity_matches("cp-1x", "cp-1") and not identity_matches("xcp-1", "cp-*")
    assert is_loopback_peer("ipv4:127.0.0.1:5000") and is_loopback_peer("ipv6:%5B::1%5D:5000")
    assert not is_loopback_peer("ipv4:10.0.0.7:5000") and not is_loopback_peer("unix:/tmp/s")


def test_slow_call_counts_are_bounded_like_calls_and_keep_their_share() -> None:
    clock = Clock()
    reports = gate(ServicePolicy("llm", rate_limit_requests=100, rate_limit_window_secs=60), clock=clock)
    honest = reports.bound("a", pb.OutcomeSummary(service="llm", timed_calls=3, slow_calls=3))
    assert honest is not None and (honest.timed_calls, honest.slow_calls) == (3, 3)  # still running
    out = reports.bound(
        "b", pb.OutcomeSummary(service="llm", successes=1, timed_calls=U32, slow_calls=U32 // 2)
    )
    assert out is not None and out.timed_calls == 200 and out.slow_calls == 100
    assert reports.refused["b"] == 1
    more = reports.bound("c", pb.OutcomeSummary(service="llm", timed_calls=2, slow_calls=9))
    assert more is not None and more.slow_calls == 2  # never more slow calls than judged ones


def test_engine_opens_on_the_fleet_share_of_slow_calls() -> None:
    policy = ServicePolicy("llm", slow_call=SlowCall(0.5, 0.5, 10, 10.0))
    engine = FleetBreakers(book(policy).policy_of, clock=Clock())
    assert not engine.record("a", pb.OutcomeSummary(service="llm", successes=5, timed_calls=5, slow_calls=2))
    moves = engine.record("b", pb.OutcomeSummary(service="llm", timed_calls=5, slow_calls=4))
    assert [m.new for m in moves] == [BreakerState.OPEN]
    message = engine.to_proto("llm")
    assert message.slow_calls == 6 and message.reason == "slow calls 60% ≥ 50% over 10 s"
    stats = FleetStatistics()
    stats.record("b", pb.OutcomeSummary(service="llm", timed_calls=5, slow_calls=4))
    assert stats.to_proto(book(policy), 0).slow_calls_by_service == {"llm": 4}


def test_endpoints_of_a_named_service_are_capped_by_its_policy_and_forgotten_when_idle() -> None:
    clock = Clock()
    policies = book(ServicePolicy("llm", max_endpoints=2, endpoint_idle_secs=5))
    breakers = FleetBreakers(policies.policy_of, clock=clock)
    admission = ServiceAdmission(policies, breakers, AdmissionLimits(per_agent=1, total=1), clock)
    assert [admission.allows("a", f"llm/e{i}") for i in range(3)] == [True, True, False]
    assert admission.held_by("a") == 0 and admission.refused == 1  # not places of unnamed names
    assert breakers.get("llm/e0").policy.max_endpoints == 2  # an endpoint follows its service's policy
    breakers.get("llm/e1")
    clock.now += 3
    assert admission.allows("a", "llm/e1")
    clock.now += 3
    assert admission.idle() == ["llm/e0"]
    breakers.forget("llm/e0")
    assert admission.allows("b", "llm/e2")
    assert admission.allows("c", "other/e0") and not admission.allows("c", "other/e1")  # unnamed: per_agent


def test_the_delete_of_a_forgotten_breaker_tells_agents_closed_without_bringing_it_back() -> None:
    policies = book(ServicePolicy("llm"))
    engine = FleetBreakers(policies.policy_of, clock=Clock())
    heard: list[tuple[str, int]] = []
    engine.change_listeners.append(lambda message, old, move: heard.append((message.name, message.state)))
    engine.record("a", pb.OutcomeSummary(service="llm/e0", failures=5))
    engine.forget("llm/e0")
    engine.adopt("llm/e0", None, 0)
    assert heard == [("llm/e0", pb.BREAKER_STATE_OPEN), ("llm/e0", pb.BREAKER_STATE_CLOSED)]
    assert engine.find("llm/e0") is None


def test_calls_over_the_endpoint_cap_count_before_they_end() -> None:
    reports = gate(ServicePolicy("llm", rate_limit_requests=100, rate_limit_window_secs=60))
    started = reports.bound("a", pb.OutcomeSummary(service="llm", endpoints_over_cap=1))
    assert started is not None and started.endpoints_over_cap == 1  # its call has not ended yet
    flood = reports.bound("b", pb.OutcomeSummary(service="llm", endpoints_over_cap=U32))
    assert flood is not None and flood.endpoints_over_cap == 200
