"""Calls an agent refused locally (its breaker open, its limits) beyond what a report may
count are cut, not read as a report that claimed too much (server/reports.py)."""

from __future__ import annotations

import logging

from mission_control.client.policy import ServicePolicy
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.reports import ReportGate, ReportLimits

from .test_reports import Clock, book


def test_an_agent_refusing_fast_is_capped_not_refused_and_noted_once_a_minute(caplog) -> None:
    clock = Clock()
    policy = ServicePolicy("s", rate_limit_requests=100, rate_limit_window_secs=60)
    reports = ReportGate(book(policy).policy_of, ReportLimits(), clock)
    counted = 0
    with caplog.at_level(logging.INFO, logger="mission_control.server.reports"):
        for _ in range(1200):  # two minutes of a breaker refusing ~45 calls a second, two agents
            clock.now += 0.1
            for agent in ("A", "B"):
                out = reports.bound(agent, pb.OutcomeSummary(service="s", rejected=5))
                counted += out.rejected if out is not None else 0
    assert counted <= 2 * (2000 + 120 * 100 / 60 * 10) + 2  # the bucket still bounds them
    assert counted < 2 * 1200 * 5
    assert not reports.refused
    assert set(reports.rejections_capped) == {"A", "B"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(caplog.records) <= 3  # once a minute, for all agents


def test_calls_beyond_the_rate_limit_are_still_refused_with_the_rejections() -> None:
    clock = Clock()
    policy = ServicePolicy("s", rate_limit_requests=100, rate_limit_window_secs=60)
    reports = ReportGate(book(policy).policy_of, ReportLimits(), clock)
    out = reports.bound("a", pb.OutcomeSummary(service="s", failures=10_000, rejected=10**6))
    assert out is not None and out.failures == 200 and out.rejected == 2000
    assert reports.refused["a"] == 1
