"""What the probe-reset tests read once the breaker closed: the fleet probes the upstream
saw, when the breaker closed (on this process's monotonic clock), and one line telling them,
shown in every assertion (tests/server/test_probe_reconnect*.py, test_probe_reset_gap.py)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from tests.support.polling import poll
from tests.support.probe_upstream import ProbeUpstream
from tests.support.probers import stored
from tests.support.procs import Proc


def run_to_close(
    endpoint: str, prefix: str, service: str, agents: list[Proc], upstream: ProbeUpstream
) -> tuple[list[Any], float]:
    """Wait for etcd to hold ``service`` CLOSED, stop ``agents``; returns the fleet probes the
    upstream saw and when the breaker closed."""
    closed = poll(
        lambda: (s := stored(endpoint, prefix, service)).get("state") == "BREAKER_STATE_CLOSED" and s,
        timeout=90,
    )
    for proc in agents:
        proc.send("stop")
    probes = [c for c in upstream.calls() if c.kind == "fleet"]
    closed_at = datetime.fromisoformat(closed["changed_at"]).timestamp() - time.time() + time.monotonic()
    return probes, closed_at


def told(probes: list[Any], most: int, bound: int, cut: float, closed_at: float) -> str:
    """The run in one line (printed, and said by every assertion), times from the first probe;
    asserts that A's probe was the first and ran across the reset at ``cut``."""
    base = min(c.start for c in probes)
    shown = (
        f"most fleet probes at once {most} (bound {bound}); reset at "
        f"{cut - base:.2f}, closed at {closed_at - base:.2f}; fleet probes (agent, start, end): "
        f"{sorted((c.agent, round(c.start - base, 2), round(c.end - base, 2)) for c in probes)}"
    )
    print(shown)
    first = min(probes, key=lambda c: c.start)
    assert first.agent == "A" and first.start < cut < first.end, (
        f"A's probe did not run at the reset: {shown}"
    )
    return shown
