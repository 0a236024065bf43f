"""What the real-process probe-permit tests share: a breaker's record as etcd holds it, and
probe agents (tests.support.probe_agent) started and ready."""

from __future__ import annotations

import json
import sys

from tests.support.etcd import etcdctl
from tests.support.procs import Proc


def stored(etcd: str, prefix: str, service: str) -> dict:  # type: ignore[type-arg]
    """The breaker record of ``service`` in etcd ({} when there is none)."""
    text = etcdctl(etcd, "get", f"{prefix}/breakers/{service}", "--print-value-only").strip()
    return json.loads(text) if text else {}  # type: ignore[no-any-return]


def start_probers(
    spawned: list[Proc],
    names: list[str],
    control_planes: str,
    upstream: str,
    service: str,
    threads: int,
    skew: float = 0.0,
) -> list[Proc]:
    """One probe agent per name, each with ``threads`` callers, all ready (their wall clocks
    ``skew`` seconds off, see tests.support.skewed_clock)."""
    procs = []
    module = ["tests.support.skewed_clock", str(skew)] if skew else []
    for name in names:
        args = [name, control_planes, upstream, service, str(threads)]
        procs.append(Proc([sys.executable, "-m", *module, "tests.support.probe_agent", *args]))
        spawned.append(procs[-1])
    for proc in procs:
        ready = proc.wait_for('{"ready"', timeout=60)
        assert '"ready": true' in ready, ready
    return procs
