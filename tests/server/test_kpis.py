"""The KPI accounting on a tiny scripted scenario whose right answers are known in advance."""

from __future__ import annotations

import pytest
from mission_control.server.kpis import Phase, Run, compute, opens, verdicts


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
        has_fallback={"llm_provider": True},
        config_changes=[(35.0, {"research": 35.05, "poc": 35.08}), (36.0, {"research": 36.01, "poc": None})],
    )


def test_known_answers() -> None:
    kpis = compute(scenario(), "llm_provider")
    assert kpis["time_to_detection_s"] == pytest.approx(12.0 - 10.1)
    # 20 calls into the outage, 4 reached the failing upstream
    assert kpis["breaker_efficiency"] == pytest.approx(16 / 20)
    assert (kpis["outage_calls"], kpis["outage_calls_reached"]) == (20, 4)
    # 20 llm calls saved by the fallback + 1 storage call saved by a retry, of 22 savable
    assert kpis["faulted_calls"] == 22
    assert kpis["recovery_rate"] == pytest.approx(21 / 22)
    # healthy: llm before t=10 (20 calls) and, the breaker's 2 s wait from t=12 long past,
    # once up for 1 s (after t=21: 37 calls); with the first wait as grace, after t=23 (33);
    # no call was stopped, but the storage breaker opened at t=5 while storage was healthy
    assert kpis["healthy_calls"] == 20 + 37
    assert kpis["false_positives"] == 1
    assert kpis["false_positive_rate"] == pytest.approx(1 / 57)
    assert (kpis["false_positives_first_wait"], kpis["healthy_calls_first_wait"]) == (1, 20 + 33)
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
    assert kpis["false_positives"] == 1  # within the breaker's wait: not false positives


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
        has_fallback={"llm_provider": True},
        open_wait={"llm_provider": lambda previous: 2.0 if previous is None else min(2 * previous, 8.0)},
    )


def test_the_false_positive_grace_is_the_wait_in_force_from_the_transitions() -> None:
    # probes failed at t=13 and t=17.1: the waits grew 2, 4, 8 s; the last probe, at 25.2,
    # found the primary back: nothing kept off before it could have been known
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
    assert (kpis["false_positives"], kpis["healthy_calls"]) == (0, 20 + 29)  # t < 10, t >= 25.5
    # with the first wait as grace, the calls kept off from t=23.5 to 25 count
    assert (kpis["false_positives_first_wait"], kpis["healthy_calls_first_wait"]) == (4, 20 + 33)
    assert kpis["kept_off_after_outage"] == 11  # t = 20 .. 25


def test_a_breaker_kept_open_past_its_wait_counts_even_if_a_longer_wait_exists() -> None:
    # one OPEN with its first 2 s wait, then no probe until t=25.3: once the primary was
    # up for over 1 s (t > 21) every call kept off counts, though the longest wait is 8 s
    run = backoff_run([(11.0, "llm_provider", "OPEN"), (25.3, "llm_provider", "CLOSED")])
    kpis = compute(run, "llm_provider")
    assert kpis["false_positives"] == 8  # t = 21.5 .. 25
    assert kpis["healthy_calls"] == 20 + 37  # t < 10, t > 21
