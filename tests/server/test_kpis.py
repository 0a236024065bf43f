"""The KPI accounting on a tiny scripted scenario whose right answers are known in advance."""

from __future__ import annotations

from typing import Any

import pytest
from mission_control.server.kpis import (
    Phase,
    Run,
    compute,
    false_positive_rate,
    opens,
    recovery_rate,
    verdicts,
)


def scenario() -> Run:
    # llm-primary is down from t=10 to t=20; agents call every 0.5 s from t=0 to t=40
    phases = [Phase("llm-primary", 10.0, 20.0, "fail"), Phase("storage", 30.0, 32.0, "flap")]
    agent_calls, upstream = [], {"llm-primary": [], "storage": []}
    for i in range(80):
        t = i * 0.5
        call_id = f"c{i}"
        outage = 10.0 <= t < 20.0
        reached = not outage or t < 12.0  # the breaker opened at t=12: 4 calls reached it
        if reached:
            upstream["llm-primary"].append({"t": t + 0.1, "id": call_id, "ok": not outage})
        agent_calls.append(
            {
                "t": t,
                "service": "llm_provider",
                "id": call_id,
                "ok": True,
                "error": None,
                "served_by": "fallback" if outage else "primary",
            }
        )
    # storage flaps: one call fails once then succeeds on retry, one fails for good
    upstream["storage"] += [
        {"t": 30.1, "id": "s1", "ok": False},
        {"t": 30.2, "id": "s1", "ok": True},
        {"t": 31.1, "id": "s2", "ok": False},
        {"t": 31.2, "id": "s2", "ok": False},
    ]
    agent_calls += [
        {
            "t": 30.0,
            "service": "storage_backend",
            "id": "s1",
            "ok": True,
            "error": None,
            "served_by": "primary",
        },
        {
            "t": 31.0,
            "service": "storage_backend",
            "id": "s2",
            "ok": False,
            "error": "StorageFailure",
            "served_by": None,
        },
    ]
    transitions = [(12.0, "llm_provider", "OPEN"), (5.0, "storage_backend", "OPEN")]  # the second: false
    return Run(
        phases=phases,
        upstream_calls=upstream,
        agent_calls=agent_calls,
        transitions=transitions,
        upstream_of={"llm_provider": "llm-primary", "storage_backend": "storage"},
        wait_of={"llm_provider": 2.0, "storage_backend": 1.0},
        config_changes=[(35.0, {"research": 35.05, "poc": 35.08}), (36.0, {"research": 36.01, "poc": None})],
    )


def test_known_answers() -> None:
    kpis = compute(scenario(), "llm_provider")
    assert kpis["time_to_detection_s"] == pytest.approx(12.0 - 10.1)
    # 20 calls into the outage, 4 reached the failing upstream
    assert kpis["breaker_efficiency"] == pytest.approx(16 / 20)
    assert (kpis["outage_calls"], kpis["outage_calls_reached"], kpis["outage_attempts"]) == (20, 4, 4)
    # 20 llm calls saved by the fallback + 1 storage call saved by a retry, of 22 hit
    assert kpis["faulted_calls"] == 22
    assert kpis["recovery_rate"] == pytest.approx(21 / 22)
    assert kpis["lost_by_error"] == {"StorageFailure": 1}
    # healthy by the schedule: llm before t=10 (20 calls) and from t=20 (40); the storage
    # calls were made while it flapped; no call was stopped, but the storage breaker opened
    # at t=5 while storage was healthy
    assert kpis["healthy_calls"] == 20 + 40
    assert kpis["false_positives"] == 1 and kpis["false_opens"] == 1
    assert kpis["false_positive_rate"] == pytest.approx(1 / 61)  # the false OPEN is in the base too
    assert kpis["false_positives_by_service"] == {"llm_provider": 0, "storage_backend": 1}
    # two changes; the second never reached "poc"
    assert kpis["reload_success"] == pytest.approx(0.5)
    assert kpis["reload_seconds"] == pytest.approx(0.08)


def test_verdicts_name_the_misses() -> None:
    rows = {name: met for name, _, _, met, _, _ in verdicts(compute(scenario(), "llm_provider"))}
    assert rows == {
        "time_to_detection_s": "yes",
        "recovery_rate": "yes",
        "breaker_efficiency": "NO",
        "false_positive_rate": "NO",
        "reload_success": "NO",
    }


def test_verdicts_show_the_seed_target_and_the_goal_apart() -> None:
    kpis = {
        "time_to_detection_s": 0.04,
        "recovery_rate": 0.93,  # meets the seed's > 90 %, not the goal's >= 95 %
        "breaker_efficiency": 0.985,  # > 95 %, not >= 99 %
        "false_positive_rate": 0.005,  # < 1 %, not <= 0.1 %
        "reload_success": 1.0,
    }
    rows = {name: (target, met, goal, met_goal) for name, _, target, met, goal, met_goal in verdicts(kpis)}
    assert rows["recovery_rate"] == ("> 90%", "yes", ">= 95%", "NO")
    assert rows["breaker_efficiency"] == ("> 95%", "yes", ">= 99%", "NO")
    assert rows["false_positive_rate"] == ("< 1%", "yes", "<= 0.1%", "NO")
    assert rows["time_to_detection_s"][1::2] == ("yes", "yes")
    assert rows["reload_success"][1::2] == ("yes", "yes")


def test_calls_kept_off_after_the_outage_are_counted_apart() -> None:
    run = scenario()
    assert compute(run, "llm_provider")["kept_off_after_outage"] == 0
    for call in run.agent_calls:
        if call["service"] == "llm_provider" and 20.0 <= call["t"] < 21.0:  # before the next probe
            call["served_by"] = "fallback"
    kpis = compute(run, "llm_provider")
    assert kpis["kept_off_after_outage"] == 2
    assert kpis["false_positives"] == 1 + 2  # kept off a healthy upstream: false positives


def backoff_run(transitions: list[tuple[float, str, str]]) -> Run:
    """llm-primary down from t=10 to t=20, a call every 0.5 s from t=0 to t=40, each one
    kept off the primary (sent to the backup) while the breaker was not CLOSED."""
    closed_at = max((t for t, _, state in transitions if state == "CLOSED"), default=float("inf"))
    calls = [
        {
            "t": i * 0.5,
            "service": "llm_provider",
            "id": f"c{i}",
            "ok": True,
            "error": None,
            "served_by": "fallback" if 11.0 <= i * 0.5 < closed_at else "primary",
        }
        for i in range(80)
    ]
    return Run(
        phases=[Phase("llm-primary", 10.0, 20.0, "fail")],
        upstream_calls={"llm-primary": []},
        agent_calls=calls,
        transitions=transitions,
        upstream_of={"llm_provider": "llm-primary"},
        wait_of={"llm_provider": 2.0},
        open_wait={"llm_provider": lambda previous: 2.0 if previous is None else min(2 * previous, 8.0)},
    )


def test_calls_kept_off_a_recovered_upstream_in_the_breakers_grown_wait_are_false_positives() -> None:
    # probes failed at t=13 and t=17.1 (the outage): the waits grew 2, 4, 8 s; the last
    # probe, at 25.2, found the primary back, up since t=20
    grown = [
        (11.0, "llm_provider", "OPEN"),
        (13.0, "llm_provider", "HALF_OPEN"),
        (13.1, "llm_provider", "OPEN"),
        (17.1, "llm_provider", "HALF_OPEN"),
        (17.2, "llm_provider", "OPEN"),
        (25.2, "llm_provider", "HALF_OPEN"),
        (25.3, "llm_provider", "CLOSED"),
    ]
    run = backoff_run(grown)
    assert [(t, wait) for t, wait, _ in opens(run, "llm_provider")] == [(11.0, 2.0), (13.1, 4.0), (17.2, 8.0)]
    kpis = compute(run, "llm_provider")
    # t = 20 .. 25 (11 calls) were sent to the backup while the primary served: counted,
    # and shown apart as within the wait of an OPEN the outage caused
    assert (kpis["false_positives"], kpis["healthy_calls"]) == (11, 20 + 40)
    assert kpis["false_positives_in_wait"] == 11 and kpis["kept_off_after_outage"] == 11
    assert kpis["false_opens"] == 0


def test_a_breaker_kept_open_past_its_wait_is_not_within_a_wait() -> None:
    # one OPEN with its first 2 s wait, then no probe until t=25.3
    run = backoff_run([(11.0, "llm_provider", "OPEN"), (25.3, "llm_provider", "CLOSED")])
    kpis = compute(run, "llm_provider")
    assert kpis["false_positives"] == 11  # t = 20 .. 25
    assert kpis["false_positives_in_wait"] == 0  # its wait ended at t=13


def healthy_run(agent_calls: list[dict[str, Any]], **fields: Any) -> Run:
    base: dict[str, Any] = {
        "phases": [],
        "upstream_calls": {"llm-primary": [], "storage": []},
        "agent_calls": agent_calls,
        "transitions": [],
        "upstream_of": {"llm_provider": "llm-primary", "storage_backend": "storage"},
        "wait_of": {"llm_provider": 2.0, "storage_backend": 1.5},
        "open_wait": {"llm_provider": lambda previous: 2.0 if previous is None else min(8.0, previous * 2)},
    }
    return Run(**{**base, **fields})


def test_a_spurious_open_whose_probes_keep_failing_counts_every_call_it_stops() -> None:
    """The upstream healthy throughout; the breaker opens at t=10 and each HALF_OPEN's probe
    fails (spuriously), so it reopens with a grown wait and stays OPEN until t=40: every
    call sent to the fallback meanwhile, and every OPEN, is a false positive."""
    transitions, t, wait = [(10.0, "llm_provider", "OPEN")], 10.0, 2.0
    while t + wait < 40:
        t += wait
        transitions += [(t, "llm_provider", "HALF_OPEN"), (t + 0.05, "llm_provider", "OPEN")]
        t, wait = t + 0.05, min(8.0, wait * 2)
    transitions.append((40.0, "llm_provider", "CLOSED"))
    calls = [
        {"t": i * 0.1, "service": "llm_provider", "id": f"c{i}", "ok": True,
         "served_by": "fallback" if 10 <= i * 0.1 < 40 else "primary"}
        for i in range(500)
    ]  # fmt: skip
    kpis = compute(healthy_run(calls, transitions=transitions), "llm_provider")
    opened = sum(1 for _, _, state in transitions if state == "OPEN")
    assert kpis["false_opens"] == opened
    assert (kpis["false_positives"], kpis["healthy_calls"]) == (300 + opened, 500)
    assert kpis["false_positive_rate"] == pytest.approx((300 + opened) / (500 + opened))
    assert kpis["false_positives_in_wait"] == 0  # no outage caused any of those OPENs


def test_writes_refused_by_the_breaker_and_lost_count_against_recovery() -> None:
    """Storage flapping; 90 writes refused by the OPEN breaker and lost, 10 made (5 after
    a failed attempt): the 90 are recoveries that failed, not calls left out."""
    calls = [{"t": 100 + i, "service": "storage_backend", "id": f"w{i}", "ok": False,
              "error": "CircuitBreakerOpen"} for i in range(90)]  # fmt: skip
    calls += [{"t": 100 + i, "service": "storage_backend", "id": f"s{i}", "ok": True} for i in range(10)]
    logged = [{"t": 100 + i, "id": f"s{i}", "ok": i % 2 == 0} for i in range(10)]
    run = healthy_run(
        calls,
        phases=[Phase("storage", 100, 200, "flap")],
        upstream_calls={"llm-primary": [], "storage": logged},
    )
    assert recovery_rate(run) == (pytest.approx(5 / 95), 95)


def test_writes_refused_on_a_healthy_upstream_are_lost_recoveries_and_false_positives() -> None:
    """Storage healthy; 400 of 1,000 writes refused with ResourceExhausted (never reaching
    it) and 100 spooled: the refused ones fail recovery, and all 500 were stopped while
    storage was healthy."""
    calls = [
        {"t": i * 0.1, "service": "storage_backend", "id": f"w{i}", "ok": i % 10 >= 4,
         **({"error": "ResourceExhausted"} if i % 10 < 4 else {}),
         **({"served_by": "spool"} if i % 10 == 4 else {})}
        for i in range(1000)
    ]  # fmt: skip
    logged = [{"t": c["t"], "id": c["id"], "ok": True} for c in calls if c["ok"]]
    run = healthy_run(calls, upstream_calls={"llm-primary": [], "storage": logged})
    assert recovery_rate(run) == (pytest.approx(100 / 500), 500)
    assert false_positive_rate(run) == (pytest.approx(0.5), 500, 1000)


def test_an_open_just_after_an_outage_is_not_false_but_one_on_a_healthy_upstream_is() -> None:
    phases = [Phase("llm-primary", 10.0, 20.0, "fail")]
    late = [(20.5, "llm_provider", "OPEN")]  # the outage's failures, counted and decided late
    assert compute(healthy_run([], phases=phases, transitions=late), "llm_provider")["false_opens"] == 0
    spurious = [(21.5, "llm_provider", "OPEN")]
    assert compute(healthy_run([], phases=phases, transitions=spurious), "llm_provider")["false_opens"] == 1


def outage_run(phases: list[Phase], transitions: list[tuple[float, str, str]]) -> Run:
    """LLM calls every 0.1 s for 60 s; each call made while a phase fails reaches the
    upstream and fails (no breaker stopped it)."""
    calls, logged = [], []
    for i in range(600):
        t = i / 10
        down = any(p.start <= t < p.end for p in phases)
        calls.append({"t": t, "service": "llm_provider", "id": f"c{i}", "ok": not down,
                      "error": "LLMProviderUnavailable" if down else None, "served_by": None})  # fmt: skip
        logged.append({"t": t, "id": f"c{i}", "ok": not down})
    return healthy_run(calls, phases=phases, transitions=transitions,
                       upstream_calls={"llm-primary": logged, "storage": []})  # fmt: skip


def test_a_breaker_that_never_opens_in_a_hard_outage_misses_detection() -> None:
    kpis = compute(outage_run([Phase("llm-primary", 10.0, 20.0, "fail")], []), "llm_provider")
    assert kpis["time_to_detection_s"] == float("inf")
    rows = {name: (shown, met, met_goal) for name, shown, _, met, _, met_goal in verdicts(kpis)}
    assert rows["time_to_detection_s"] == ("never", "NO", "NO")


def test_detection_is_judged_on_the_first_outage_in_time_however_the_phases_are_listed() -> None:
    phases = [Phase("llm-primary", 40.0, 50.0, "fail"), Phase("llm-primary", 10.0, 20.0, "fail")]
    opened = [(13.0, "llm_provider", "OPEN"), (40.1, "llm_provider", "OPEN")]
    assert compute(outage_run(phases, opened), "llm_provider")["time_to_detection_s"] == pytest.approx(3.0)


def test_the_false_positive_rate_counts_each_false_open_in_its_base_and_stays_within_100_percent() -> None:
    calls = [
        {"t": 1.0, "service": "llm_provider", "id": "c1", "ok": True, "error": None, "served_by": "fallback"}
    ]
    spurious = [(0.5, "llm_provider", "OPEN"), (5.0, "llm_provider", "OPEN"), (9.0, "llm_provider", "OPEN")]
    rate, false, healthy = false_positive_rate(healthy_run(calls, transitions=spurious))
    assert (false, healthy) == (1 + 3, 1)
    assert rate == pytest.approx(4 / 4)  # was 4 / 1: 400 %
    assert false_positive_rate(healthy_run([], transitions=spurious))[0] == pytest.approx(1.0)
