"""The adaptive hedging fields through the operator CLI and a real control plane: validated
with every bad field listed, imported, and shown by `policies get`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from mission_control.client.policy import Hedging

from tests.server.test_cli import cli, plane  # noqa: F401  (the fixture)

ADAPTIVE = (
    "[service_specific.llm_provider]\nidempotent = true\n"
    "[service_specific.llm_provider.hedging]\nmax_attempts = 2\ndelay_secs = 0.2\n"
    "delay_percentile = 95.0\nmin_delay_secs = 0.01\nmax_extra_ratio = 0.1\n"
)


def test_a_bad_adaptive_hedging_lists_every_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        ADAPTIVE.replace("95.0", "20").replace("0.01", '"soon"').replace("ratio = 0.1", "ratio = 3")
    )
    result = cli("config", "validate", str(path), "--json")
    assert result.returncode == 2
    prefix = "service_specific.llm_provider.hedging."
    assert {v["field"] for v in json.loads(result.stdout)["violations"]} == {
        f"{prefix}delay_percentile",
        f"{prefix}min_delay_secs",
        f"{prefix}max_extra_ratio",
    }


def test_policies_get_shows_the_adaptive_hedging_imported(plane: str, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "adaptive.toml"
    path.write_text(ADAPTIVE)
    assert cli("config", "import", str(path), server=plane).returncode == 0
    shown = cli("policies", "get", "llm_provider", server=plane)
    assert shown.returncode == 0, shown.stderr
    hedging = tomllib.loads(shown.stdout)["service_specific"]["llm_provider"]["hedging"]
    expected = Hedging(2, 0.2, delay_percentile=95, min_delay_secs=0.01, max_extra_ratio=0.1)
    assert Hedging(**hedging) == expected
