"""The alert rules check and pass their known-answer tests with promtool, and a real Prometheus
(Debian's package, on a free port) scrapes a live control plane and fires the breaker alert."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.server.etcd_process import EtcdProcess, free_port
from mission_control.server.proc import Child

from tests.support.procs import ROOT, Proc, control_plane

RULES = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    done = subprocess.run(
        ["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_check_and_pass_their_unit_tests() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yaml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yaml")
    names = {
        r["alert"] for g in yaml.safe_load((RULES / "alerts.yaml").read_text())["groups"] for r in g["rules"]
    }
    tested = (RULES / "alerts_test.yaml").read_text()
    assert all(f"alertname: {name}" in tested for name in names), "every alert has a known-answer test"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def poll(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.fixture
def plane(etcd_server: EtcdProcess, prefix: str) -> Iterator[tuple[str, str]]:
    proc, address = control_plane(etcd_server.endpoint, prefix, "--http", "127.0.0.1:0")
    try:
        http = proc.wait_for("mission-control: dashboard at ", timeout=30).split()[-1].rstrip("/")
        yield address, http
    finally:
        proc.kill()


def test_a_real_prometheus_scrapes_the_breaker_state_and_fires_the_alert(
    plane: tuple[str, str], tmp_path: Path
) -> None:
    address, http = plane
    target = urllib.parse.urlsplit(http).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "alerts.yaml")],
        "scrape_configs": [{"job_name": "mission-control", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus: Proc | Child = Child(
        [
            "prometheus", f"--config.file={tmp_path / 'prometheus.yaml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        up = poll(lambda: get_json(f"{api}/query?query=up")["data"]["result"])
        assert up[0]["value"][1] == "1"
        with grpc.insecure_channel(address) as channel:  # loopback: open to writes without tokens
            pb_grpc.ControlPlaneServiceStub(channel).SetBreakerState(
                pb.SetBreakerStateRequest(
                    name="llm_provider", state=pb.BREAKER_STATE_FORCED_OPEN, reason="alert test", create=True
                ),
                timeout=10,
            )
        query = urllib.parse.quote('mission_control_breaker_state{state="FORCED_OPEN"} == 1')
        series = poll(lambda: get_json(f"{api}/query?query={query}")["data"]["result"])
        assert series[0]["metric"]["breaker"] == "llm_provider"
        # a forced state is an operator's choice, not an outage: that alert stays quiet
        alerts = get_json(f"{api}/alerts")["data"]["alerts"]
        assert not [a for a in alerts if a["labels"]["alertname"] == "MissionControlBreakerOpened"]
        # a real trip: five failures reported by an agent
        _trip(address, "storage_backend")

        def firing() -> list[dict[str, Any]]:
            return [
                a
                for a in get_json(f"{api}/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == "MissionControlBreakerOpened" and a["state"] == "firing"
            ]

        fired = poll(firing)
        assert fired[0]["labels"]["breaker"] == "storage_backend"
        assert fired[0]["annotations"]["runbook"] == "docs/runbooks/breaker-stuck-open.md"
    finally:
        prometheus.kill()


def _trip(address: str, service: str) -> None:
    """Report five consecutive failures over a Connect stream, as an agent does."""

    def requests() -> Iterator[pb.ConnectRequest]:
        yield pb.ConnectRequest(
            hello=pb.AgentHello(agent_id="alert-agent", session_id="s", services=[service])
        )
        summary = pb.OutcomeSummary(service=service, failures=5, trailing_failures=5)
        yield pb.ConnectRequest(outcomes=pb.OutcomeBatch(summaries=[summary], sequence=1))

    with grpc.insecure_channel(address) as channel:
        stream = pb_grpc.ControlPlaneServiceStub(channel).Connect(requests(), timeout=30)
        for response in stream:
            breaker = response.breaker
            if (
                response.HasField("breaker")
                and breaker.name == service
                and breaker.state == pb.BREAKER_STATE_OPEN
            ):
                stream.cancel()
                return
    raise AssertionError(f"{service} did not open")
