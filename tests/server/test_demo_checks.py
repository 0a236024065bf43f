"""The demo's upstreams answer grpc.health.v1 honestly (a real server on port 0, asked by the
control plane's own asker): down answers no check, slow answers as slowly as its calls (a
check with a shorter timeout times out), flapping says SERVING; and the demo's policies
name a recovery check of each upstream with a breaker."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from mission_control.client.config import policy_from_proto
from mission_control.client.recovery_check import RecoveryCheck
from mission_control.server.demo import POLICIES, _policies_note
from mission_control.server.demo_checks import serve_health, with_recovery_checks
from mission_control.server.recovery_asks import TargetAsker


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    mode = ["ok"]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    serve_health(server, lambda: mode[0])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", mode
    server.stop(0)


async def test_the_health_answer_follows_the_upstreams_mode(upstream: tuple[str, list[str]]) -> None:
    address, mode = upstream
    ask = TargetAsker()
    check = RecoveryCheck(address, timeout_secs=0.3)
    try:
        answers = {}
        for mode[0] in ("ok", "fail", "slow:0.6", "flap"):
            answers[mode[0]] = await ask(check)
    finally:
        await ask.close()
    assert answers == {"ok": "SERVING", "fail": "unreachable", "slow:0.6": "timeout", "flap": "SERVING"}


def test_the_demo_checks_each_upstream_with_a_breaker() -> None:
    peers = {"llm-primary": "127.0.0.1:1001", "storage": "127.0.0.1:1002", "llm-backup": "127.0.0.1:1003"}
    checks = {p.service: policy_from_proto(p).recovery_check for p in with_recovery_checks(POLICIES, peers)}
    assert checks["llm_provider"] == RecoveryCheck("127.0.0.1:1001", interval_secs=0.02, timeout_secs=1.0)
    assert checks["storage_backend"] == RecoveryCheck("127.0.0.1:1002", interval_secs=0.02, timeout_secs=0.15)
    assert checks["llm_backup"] is None and checks["agent_communication"] is None
    assert "recovery checks (grpc.health.v1) every 0.02 s while OPEN" in _policies_note()
