"""A short real run of the demo scenario: every process starts, traffic flows, KPIs come out."""

from __future__ import annotations

import io
import json
from pathlib import Path

from mission_control.server.demo import _collect, _policies_note, run_demo
from mission_control.server.etcd_process import EtcdProcess


def test_a_short_demo_produces_the_kpi_table(etcd_server: EtcdProcess) -> None:
    out = io.StringIO()
    kpis = run_demo(duration=8, seed=2, etcd=etcd_server.endpoint, out=out)
    text = out.getvalue()
    assert "llm-primary fail" in text and "KPIs (duration 8s, seed 2" in text
    assert "dashboard: http://127.0.0.1:" in text
    assert _policies_note() in text  # the demo's own policies, not the defaults, are named
    assert kpis["calls"] > 100
    # the outage was detected (the breaker opened) and the backup served calls meanwhile
    assert kpis["time_to_detection_s"] is not None and kpis["time_to_detection_s"] < 5
    assert kpis["breaker_efficiency"] is not None and kpis["breaker_efficiency"] > 0.5
    assert kpis["recovery_rate"] is not None and kpis["recovery_rate"] > 0.5
    assert kpis["reload_success"] == 1.0


def test_a_spooled_write_counts_as_made_only_when_the_upstream_logged_it(tmp_path: Path) -> None:
    def log(name: str, *rows: dict[str, object]) -> None:
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    write = {"service": "storage_backend", "ok": True, "error": None, "served_by": "spool"}
    log("research", {**write, "t": 1.0, "id": "research:1"}, {**write, "t": 2.0, "id": "research:2"})
    log("storage", {"t": 1.0, "id": "research:1", "ok": False}, {"t": 9.0, "id": "research:1", "ok": True})
    run = _collect(tmp_path, [], [], [])
    made = {call["id"]: (call["ok"], call["error"]) for call in run.agent_calls}
    assert made == {"research:1": (True, None), "research:2": (False, "StorageFailure")}


def test_the_demo_names_its_own_tuned_policies() -> None:
    note = _policies_note()
    assert "llm_provider breaker wait 2 s up to 8 s, timeout 2 s" in note
    assert "storage_backend breaker wait 1.5 s up to 6 s, timeout 0.3 s" in note
    assert "bench case 5" in note
