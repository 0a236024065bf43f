"""The KPI accounting on a tiny scripted scenario whose right answers are known in advance."""

from __future__ import annotations

import pytest
from mission_control.server.kpis import Phase, Run, compute, verdicts


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
    # healthy: llm before t=10 (20 calls) and after t=23 (33 calls); no call was stopped,
    # but the storage breaker opened at t=5 while storage was healthy
    assert kpis["healthy_calls"] == 20 + 33
    assert kpis["false_positives"] == 1
    assert kpis["false_positive_rate"] == pytest.approx(1 / 53)
    # two changes; the second never reached "poc"
    assert kpis["reload_success"] == pytest.approx(0.5)
    assert kpis["reload_seconds"] == pytest.approx(0.08)


def test_verdicts_name_the_misses() -> None:
    rows = {name: met for name, _, _, met in verdicts(compute(scenario(), "llm_provider"))}
    assert rows == {
        "time_to_detection_s": "yes",
        "recovery_rate": "yes",
        "breaker_efficiency": "NO",
        "false_positive_rate": "NO",
        "reload_success": "NO",
    }


def test_calls_kept_off_after_the_outage_are_counted_apart() -> None:
    run = scenario()
    assert compute(run, "llm_provider")["kept_off_after_outage"] == 0
    for call in run.agent_calls:
        if call["service"] == "llm_provider" and 20.0 <= call["t"] < 21.0:  # before the next probe
            call["served_by"] = "fallback"
    kpis = compute(run, "llm_provider")
    assert kpis["kept_off_after_outage"] == 2
    assert kpis["false_positives"] == 1  # within the breaker's wait: not false positives
