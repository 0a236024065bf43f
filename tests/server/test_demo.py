"""A short real run of the demo scenario: every process starts, traffic flows, KPIs come out."""

from __future__ import annotations

import io

from mission_control.server.demo import run_demo
from mission_control.server.etcd_process import EtcdProcess


def test_a_short_demo_produces_the_kpi_table(etcd_server: EtcdProcess) -> None:
    out = io.StringIO()
    kpis = run_demo(duration=8, seed=2, etcd=etcd_server.endpoint, out=out)
    text = out.getvalue()
    assert "llm-primary fail" in text and "KPIs (duration 8s, seed 2" in text
    assert "dashboard: http://127.0.0.1:" in text
    assert kpis["calls"] > 100
    # the outage was detected (the breaker opened) and the backup served calls meanwhile
    assert kpis["time_to_detection_s"] is not None and kpis["time_to_detection_s"] < 5
    assert kpis["breaker_efficiency"] is not None and kpis["breaker_efficiency"] > 0.5
    assert kpis["recovery_rate"] is not None and kpis["recovery_rate"] > 0.5
    assert kpis["reload_success"] == 1.0
