"""The recovery check through the operator CLI and a real control plane: every bad field
listed and nothing changed, imported, and shown by `policies get`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from mission_control.client.recovery_check import RecoveryCheck

from tests.server.test_cli import cli, plane  # noqa: F401  (the fixture)

CHECKED = (
    "[service_specific.llm_provider]\nwait_duration_secs = 30\n"
    '[service_specific.llm_provider.recovery_check]\ntarget = "llm-gateway:50051"\n'
    'health_service = "llm"\ninterval_secs = 0.5\ntimeout_secs = 0.8\n'
)


def test_bad_recovery_check_values_are_all_listed_and_nothing_changes(
    plane: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(CHECKED)
    assert cli("config", "import", str(good), server=plane).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(
        CHECKED.replace("llm-gateway:50051", "no-port")
        .replace("0.5", "0.01")
        .replace("0.8", '"soon"')
        .replace("wait_duration_secs = 30", "wait_duration_secs = 5")
    )
    result = cli("config", "validate", str(bad), "--json")
    assert result.returncode == 2
    prefix = "service_specific.llm_provider.recovery_check."
    assert {v["field"] for v in json.loads(result.stdout)["violations"]} == {
        f"{prefix}target",
        f"{prefix}interval_secs",
        f"{prefix}timeout_secs",
    }
    assert cli("config", "import", str(bad), server=plane).returncode != 0
    shown = cli("policies", "get", "llm_provider", server=plane)
    assert shown.returncode == 0, shown.stderr
    policy = tomllib.loads(shown.stdout)["service_specific"]["llm_provider"]
    assert policy["wait_duration_secs"] == 30  # the refused import changed nothing
    assert RecoveryCheck(**policy["recovery_check"]) == RecoveryCheck("llm-gateway:50051", "llm", 0.5, 0.8)


def test_scheme_and_control_character_targets_are_refused_and_nothing_changes(
    plane: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(CHECKED)
    assert cli("config", "import", str(good), server=plane).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(
        CHECKED.replace("llm-gateway:50051", "unix:1234").replace(
            "wait_duration_secs = 30", "wait_duration_secs = 5"
        )
        + '[service_specific.storage_backend.recovery_check]\ntarget = "http://h/\\u001b[2J"\n'
        + '[service_specific.agent_communication.recovery_check]\ntarget = "http://h/\\u0000"\n'
    )
    result = cli("config", "import", str(bad), server=plane)
    assert result.returncode == 2, (result.stdout, result.stderr)
    for service in ("llm_provider", "storage_backend", "agent_communication"):
        assert f"service_specific.{service}.recovery_check.target" in result.stderr, result.stderr
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr
    shown = cli("policies", "get", "llm_provider", server=plane)
    policy = tomllib.loads(shown.stdout)["service_specific"]["llm_provider"]
    assert policy["wait_duration_secs"] == 30 and policy["recovery_check"]["target"] == "llm-gateway:50051"
    listed = cli("policies", "list", server=plane)
    assert "storage_backend" not in listed.stdout, listed.stdout
