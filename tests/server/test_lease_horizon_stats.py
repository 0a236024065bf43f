"""`mission-control stats` shows, per fleet limit, what the last split kept aside for agents
without a lease and the holders past their horizon (see server/capacity.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.operator import Operator


def stats_printed(usage: pb.FleetLimitUsage, capsys: pytest.CaptureFixture[str]) -> str:
    answer = pb.GetErrorStatisticsResponse(statistics=pb.ErrorStatistics(fleet_limits=[usage]))
    operator = Operator("127.0.0.1:1", as_json=False)
    operator.stub = SimpleNamespace(GetErrorStatistics=lambda request, **kw: answer)  # type: ignore[assignment]
    try:
        assert operator.stats() == 0
    finally:
        operator.close()
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fleet limit"))


def test_stats_show_units_kept_aside_and_agents_past_their_horizon(
    capsys: pytest.CaptureFixture[str],
) -> None:
    usage = pb.FleetLimitUsage(
        service="s", resource="s.requests", fleet_units=25, leased=12, period_secs=0.5, agents=2
    )
    assert "kept aside" not in stats_printed(usage, capsys)
    usage.kept_aside, usage.past_horizon = 13, 2
    line = stats_printed(usage, capsys)
    assert line.endswith("2 agents, 13 kept aside for agents without a lease, 2 past their horizon"), line
