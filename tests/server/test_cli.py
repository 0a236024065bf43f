"""The operator CLI against a real control plane: config round trips, exit codes, races,
and a stricter policy reaching a running agent process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from mission_control.client.config import load_config, load_config_file
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.etcd import etcdctl
from tests.support.procs import Proc, agent, control_plane, python
from tests.support.upstream import set_mode

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "config" / "error_handling.toml"


def cli(*args: str, server: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mission_control.server.cli", *args]
    if server is not None:
        command += ["--server", server]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def plane(etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]) -> str:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    return address


BROKEN = {
    "wrong types": (
        '[service_specific.llm_provider]\ntimeout_secs = "thirty"\nmax_retries = 1.5\n',
        {
            "service_specific.llm_provider.timeout_secs: must be a number",
            "service_specific.llm_provider.max_retries: must be an integer",
        },
    ),
    "negative and zero": (
        "default_max_retries = -1\n[service_specific.storage_backend]\ntimeout_secs = -10\n"
        "failure_threshold = 0\nsuccess_threshold = 0\nrate_limit_window_secs = 0\n",
        {
            "default_max_retries: must be >= 0",
            "service_specific.storage_backend.timeout_secs: must be > 0",
            "service_specific.storage_backend.failure_threshold: must be > 0",
            "service_specific.storage_backend.success_threshold: must be > 0",
            "service_specific.storage_backend.rate_limit_window_secs: must be > 0",
        },
    ),
    "unknown keys and bad service names": (
        'colour = 1\n[service_specific.llm_provider]\nretries = 3\n[service_specific."bad name!"]\n',
        {
            "colour: unknown key",
            "service_specific.llm_provider.retries: unknown key",
            "service_specific.bad name!.service: must be 1-128 characters of letters, digits, "
            "'_', '.' or '-'",
        },
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_reports_every_problem(case: str, tmp_path: Path) -> None:
    text, expected = BROKEN[case]
    path = tmp_path / "broken.toml"
    path.write_text(text)
    result = cli("config", "validate", str(path), "--json")
    assert result.returncode == 2
    found = {f"{v['field']}: {v['message']}" for v in json.loads(result.stdout)["violations"]}
    assert found == expected
    human = cli("config", "validate", str(path))
    assert human.returncode == 2 and "Traceback" not in human.stderr
    assert all(line in human.stderr for line in expected)


def test_import_export_diff_round_trip(plane: str, tmp_path: Path) -> None:
    assert cli("config", "validate", str(SEED)).returncode == 0
    dry = cli("config", "import", str(SEED), "--dry-run", server=plane)
    assert dry.returncode == 0 and "+ llm_provider (added)" in dry.stdout
    assert "dry run" in dry.stdout
    assert json.loads(cli("policies", "list", "--json", server=plane).stdout) == []
    assert cli("config", "import", str(SEED), server=plane).returncode == 0
    exported = tmp_path / "live.toml"
    assert cli("config", "export", str(exported), server=plane).returncode == 0
    # the export re-imports to the same state: same policies, nothing to change
    assert load_config_file(exported).service_specific == load_config_file(SEED).service_specific
    diff = cli("config", "diff", str(exported), server=plane)
    assert diff.returncode == 0 and diff.stdout.count("(unchanged)") == 3
    stricter = tmp_path / "stricter.toml"
    section = "[service_specific.llm_provider]\ntimeout_secs = 30"
    stricter.write_text(SEED.read_text().replace(section, section[:-2] + "12"))
    diff = cli("config", "diff", str(stricter), server=plane)
    assert "~ llm_provider (changed)" in diff.stdout and "timeout_secs: 30.0 -> 12.0" in diff.stdout


def test_bad_import_writes_nothing(plane: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SEED.read_text() + "\n[service_specific.extra]\ntimeout_secs = 0\n")
    result = cli("config", "import", str(bad), server=plane)
    assert result.returncode == 2 and "service_specific.extra.timeout_secs: must be > 0" in result.stderr
    assert json.loads(cli("policies", "list", "--json", server=plane).stdout) == []


def test_exit_codes_and_one_line_errors(plane: str) -> None:
    missing = cli("breakers", "get", "nothing-here", server=plane)
    assert (
        missing.returncode == 4
        and missing.stderr.strip() == "mission-control: no breaker named 'nothing-here'"
    )
    down = cli("breakers", "list", server="127.0.0.1:1")
    assert down.returncode == 3 and "cannot reach the control plane" in down.stderr
    assert "Traceback" not in down.stderr
    bad = cli("breakers", "force-open", "--reason", "test", "--create", "bad name", server=plane)
    assert bad.returncode == 2 and "name:" in bad.stderr
    assert (
        cli("breakers", "force-open", "--create", "llm_provider", "--reason", "x", server=plane).returncode
        == 0
    )
    listed = json.loads(cli("breakers", "list", "--json", server=plane).stdout)
    assert listed[0]["state"] == "BREAKER_STATE_FORCED_OPEN"
    assert cli("health", server=plane).returncode == 0
    assert cli("stats", "--json", server=plane).returncode == 0


def test_breakers_watch_streams(plane: str) -> None:
    proc = Proc([sys.executable, "-m", "mission_control.server.cli", "breakers", "watch", "--server", plane])
    try:
        time.sleep(0.5)
        assert (
            cli("breakers", "force-open", "--create", "r2", "--reason", "ops", server=plane).returncode == 0
        )
        line = proc.wait_for("", timeout=20)
        assert "r2" in line and "FORCED_OPEN" in line and " UTC " in line
    finally:
        proc.kill()


def test_import_racing_put_policy_is_never_half_applied(
    plane: str, etcd_server: EtcdProcess, prefix: str
) -> None:
    stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(plane))
    seed = tomllib.loads(SEED.read_text())
    imported: list[tuple[int, int]] = []  # (marker, revision)
    stop = threading.Event()

    def importer() -> None:
        from mission_control.client.config import config_to_proto

        for marker in range(100, 130):
            data = json.loads(json.dumps(seed))
            for entry in data["service_specific"].values():
                entry["timeout_secs"] = marker
            request = pb.ImportConfigRequest(config=config_to_proto(load_config(data)))
            try:
                response = stub.ImportConfig(request, timeout=10)
                imported.append((marker, response.revision))
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.ABORTED, err
        stop.set()

    def putter() -> None:
        while not stop.is_set():
            policy = policy_pb2.ServicePolicy(service="llm_provider", timeout_secs=7)
            stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10)

    threads = [threading.Thread(target=importer), threading.Thread(target=putter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert imported, "some imports got through"
    for marker, revision in imported:
        for service in ("llm_provider", "storage_backend", "agent_communication"):
            key = f"{prefix}/policies/{service}"
            value = etcdctl(etcd_server.endpoint, "get", key, f"--rev={revision}", "--print-value-only")
            assert json.loads(value)["timeout_secs"] == marker, (service, marker, revision)


def test_stricter_import_reaches_a_running_agent(plane: str, spawned: list[Proc], tmp_path: Path) -> None:
    upstream_proc = python("tests.support.upstream", "llm")
    spawned.append(upstream_proc)
    upstream = f"127.0.0.1:{upstream_proc.port()}"
    relaxed = tmp_path / "relaxed.toml"
    relaxed.write_text(
        "[service_specific.llm_provider]\ntimeout_secs = 5\nmax_retries = 0\nrate_limit_requests = 1000\n"
        "failure_threshold = 100\n"
    )
    assert cli("config", "import", str(relaxed), server=plane).returncode == 0
    a = agent("agent-a", plane, upstream, "llm_provider")
    spawned.append(a)
    set_mode(upstream, "slow", delay_secs=0.5)
    assert a.ask("call 2")["outcomes"] == {"ok": 2}

    strict = tmp_path / "strict.toml"
    strict.write_text(
        "[service_specific.llm_provider]\ntimeout_secs = 0.2\nmax_retries = 0\nrate_limit_requests = 3\n"
        "failure_threshold = 100\n"
    )
    assert cli("config", "import", str(strict), server=plane).returncode == 0
    deadline = time.monotonic() + 10
    while a.ask("policy")["timeout_secs"] != 0.2:
        assert time.monotonic() < deadline, "the agent never got the new policy"
        time.sleep(0.05)
    # no restart: the next calls follow the new timeout, then the new rate limit
    assert a.ask("call 5")["outcomes"] == {"OperationTimeout": 3, "ResourceExhausted": 2}
